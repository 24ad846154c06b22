from helpers.db import scalar


def test_fresh_database_has_main_branch_with_a_head_commit(db):
    head = scalar(db, "SELECT head_commit_hash FROM pggit.branches WHERE name = 'main'")
    assert head and scalar(db, "SELECT count(*) FROM pggit.commits WHERE hash = %s", (head,)) == 1
