"""Runbooks as data (strict validation) and the run state's rules (gating, skip, retry)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tui.core.errors import ConfigError
from tui.core.runbook import DONE, FAILED, SKIPPED, RunbookRun, load_runbook, load_runbooks


def test_the_sops_runbooks_load() -> None:
    books = {b.id: b for b in load_runbooks()}
    assert set(books) >= {"emergency-restore", "standard-restore", "backup-verification",
                          "pre-migration-backup"}
    kinds = [s.kind for s in books["emergency-restore"].steps]
    assert kinds[:2] == ["checklist", "command"] and "restore" in kinds and "verify" in kinds
    assert kinds.index("backup") < kinds.index("restore") < kinds.index("verify") < \
        kinds.index("http_check")


@pytest.mark.parametrize(("body", "needle"), [
    ('name = "x"\n[[steps]]\nkind = "note"\ntitle = "t"\ncolour = "red"\n', "unknown key 'colour'"),
    ('name = "x"\n[[steps]]\nkind = "teleport"\ntitle = "t"\n', "unknown kind 'teleport'"),
    ('name = "x"\n[[steps]]\nkind = "note"\n', "missing 'title'"),
    ('name = "x"\n[[steps]]\nkind = "command"\ntitle = "t"\n', "missing 'command'"),
    ('[[steps]]\nkind = "note"\ntitle = "t"\n', "missing 'name'"),
    ('name = "x"\n[[steps]]\nkind = "checklist"\ntitle = "t"\nitems = [{ txt = "a" }]\n',
     "needs text"),
    ('name = "x"\nsteps = [\n', "not valid TOML"),
])
def test_bad_runbooks_are_refused_with_file_and_line(tmp_path: Path, body: str,
                                                     needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_runbook(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_an_unknown_key_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\n\n[[steps]]\nkind = "note"\ntitle = "t"\ncolour = "red"\n')
    with pytest.raises(ConfigError) as err:
        load_runbook(path)
    assert f"{path}:6" in str(err.value)


def test_a_users_runbook_directory_adds_and_replaces(tmp_path: Path) -> None:
    (tmp_path / "standard-restore.toml").write_text(
        'name = "Our restore"\n[[steps]]\nkind = "note"\ntitle = "hello"\n')
    books = {b.id: b for b in load_runbooks(tmp_path)}
    assert books["standard-restore"].name == "Our restore"
    assert "emergency-restore" in books


def _run() -> RunbookRun:
    books = {b.id: b for b in load_runbooks()}
    return RunbookRun(books["standard-restore"])


def test_required_items_gate_the_step() -> None:
    run = _run()
    assert not run.advance() and "tick the required" in (run.blocked_reason() or "")
    for i, item in enumerate(run.state.step.items):
        if item.required:
            run.toggle(i)
    assert run.advance() and run.current == 1 and run.states[0].status == DONE


def test_an_action_step_needs_its_action_or_a_reasoned_skip() -> None:
    run = _run()
    run.states[0].ticked = set(range(len(run.state.step.items)))
    run.advance()
    assert run.state.step.kind == "restore"
    assert not run.advance() and "run the step's action" in (run.blocked_reason() or "")
    run.start()
    run.finish(False, "boom")
    assert run.state.status == FAILED and not run.advance()
    assert "failed" in (run.blocked_reason() or "")
    run.start()
    run.finish(True, "ok")  # retry succeeds
    assert run.advance() and run.current == 2
    with pytest.raises(ValueError):
        run.skip("   ")
    run.skip("verified by hand with the DBA")
    assert run.states[2].status == SKIPPED and run.advance()
    report = run.report()
    assert "verified by hand with the DBA" in report and "| Restore | done |" in report


def test_an_optional_action_passed_without_running_is_skipped_not_done() -> None:
    books = {b.id: b for b in load_runbooks()}
    run = RunbookRun(books["emergency-restore"])
    run.states[0].ticked = set(range(len(run.state.step.items)))
    assert run.advance()  # the checklist: done
    assert run.states[0].status == DONE
    run.start()
    run.finish(True, "maintenance on")
    assert run.advance()
    assert run.state.step.kind == "notify" and not run.state.step.required
    assert run.advance()  # passed without posting anything
    told = run.states[2]
    assert told.status == SKIPPED and told.reason == "optional, not run"
    report = run.report()
    assert "| Tell the team | skipped |" in report and "optional, not run" in report
    assert "Tell the team: skipped (optional, not run)" in report
