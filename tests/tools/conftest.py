"""The tools layer: the runner with the fake tool (helpers/fake_tool.py), each real tool adapter
(pg_dump, pg_basebackup, pgBackRest, Barman) and attacks on what they run, and the packaging
files. What runs a real pgBackRest, Barman or a cluster of its own is marked slow; what starts a
supervisor uses make_service (tests/conftest.py), which marks it supervisor: `make check` runs
the rest of this layer."""
