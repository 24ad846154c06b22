"""Each tool's parameters, declared once: the values the SQL's backup_* functions validate, and
the typed record a job's spec is parsed into (one module per tool, helpers in common.py)."""
