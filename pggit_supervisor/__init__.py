"""pggit-supervisor: the backup automation service of pgGit."""

__version__ = "0.1.0"
