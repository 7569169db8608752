"""What every report names: the commit of the code that ran."""


def test_commit_named_by_environment_where_there_is_no_git(monkeypatch):
    from simulations.report import code_commit

    monkeypatch.setenv("FEDXREC_COMMIT", "abc1234")
    assert code_commit() == "abc1234"
    monkeypatch.delenv("FEDXREC_COMMIT")
    assert code_commit() not in ("", "abc1234")
