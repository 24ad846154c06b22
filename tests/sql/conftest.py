"""The sql layer: the SQL API as its users meet it, each test on a fresh database cloned from the
schema template (tests/conftest.py), through real logins granted the package's roles: the queue,
roles and guides, attacks on the SQL, schema install and migration, the session cluster itself.
No supervisor process and no real tool here (those are tests/service and tests/tools); the
shorthands are in helpers/db.py and helpers/queue.py, the fixtures in tests/conftest.py."""
