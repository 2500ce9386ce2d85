"""One emergency backup per incident (issue 15, item 3): a restore lets a backup already taken
stand as its safety backup only when the server says nothing has been written since its
snapshot; and the emergency runbook walked with Pilot, as an operator without a chat webhook
would.

These tests run on a cluster of their own with autovacuum off: transaction IDs are the
cluster's, and an ANALYZE on another test's database would be a write (the engine would then,
rightly, take a fresh safety backup). The operator is an ordinary role that owns its database,
as on a hosted service."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PASSWORD, Server, Workspace, clean_env
from tests.test_tui import wait_for_step
from tui.app import make_app
from tui.core.cluster import ThrowawayCluster
from tui.core.restore.safety import decide, written_since
from tui.core.runbook import RunbookRun
from tui.core.settings import load_settings
from tui.screens.modals import AskText, TeamUpdate, YesNo
from tui.screens.runner import RunnerScreen

APP_SQL = """
CREATE TABLE public.customers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text);
CREATE TABLE public.orders (id serial PRIMARY KEY,
                            customer_id bigint REFERENCES public.customers (id), total numeric);
INSERT INTO public.customers (name) SELECT 'c' || g FROM generate_series(1, 200) g;
INSERT INTO public.orders (customer_id, total) SELECT 1 + g % 200, g FROM generate_series(1, 1000) g;
"""


@pytest.fixture(scope="module")
def quiet() -> Iterator[Server]:
    cluster = ThrowawayCluster(password=PASSWORD, extra_conf={"autovacuum": "off"})
    cluster.start()
    try:
        server = Server(cluster, PASSWORD)
        with server.connect() as conn:
            conn.execute(f"CREATE ROLE operator LOGIN NOSUPERUSER CREATEDB PASSWORD '{PASSWORD}'")
        yield server
    finally:
        cluster.stop()


@pytest.fixture
def ws(quiet: Server, tmp_path: Path) -> Iterator[Workspace]:
    name = f"app_{tmp_path.name[-12:].lower().replace('-', '_')}"
    with quiet.connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}" OWNER operator')
    with psycopg.connect(host="127.0.0.1", port=quiet.port, user="operator", password=PASSWORD,
                         dbname=name, autocommit=True) as conn:
        conn.execute(APP_SQL)
    workspace = Workspace(tmp_path, quiet, name)
    workspace.write_env(SUPABASE_DB_USER="operator")
    yield workspace
    quiet.drop_db(name)


def _as_operator(ws: Workspace) -> psycopg.Connection:
    return psycopg.connect(host="127.0.0.1", port=ws.server.port, user="operator",
                           password=PASSWORD, dbname=ws.dbname, autocommit=True)


def _backup(ws: Workspace, *args: str) -> dict:
    return dict(json.loads(ws.run("backup", *args, "--json", check=True).stdout))


def _names(ws: Workspace) -> list[str]:
    return sorted(p.name[: -len(".backup")] for p in ws.backup_dir.glob("*.backup"))


def _restore_end(ws: Workspace) -> dict:
    audit = [json.loads(x) for x in (ws.backup_dir / "audit.log").read_text().splitlines()]
    return [e for e in audit if e["operation"] == "restore" and e["event"] == "end"][-1]


def test_an_unchanged_database_lets_the_emergency_backup_stand_as_the_safety_backup(
        ws: Workspace) -> None:
    good = _backup(ws)["name"]
    with _as_operator(ws) as conn:
        conn.execute("DELETE FROM public.orders WHERE id % 4 = 0")  # the incident
    emergency = _backup(ws, "--kind", "emergency")["name"]
    before = _names(ws)
    proc = ws.run("restore", good, "--yes", "--safety-backup", emergency, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["result"] == "PASS" and out["safety_backup"] == emergency
    assert "reused, not taken again" in out["safety_note"]
    assert "no transaction ID has been assigned" in out["safety_note"]
    assert _names(ws) == before  # no second dump
    end = _restore_end(ws)
    assert end["safety_backup"] == emergency and end["arguments"]["safety_candidate"] == emergency
    # And it is a real undo: restoring it brings the incident's state back.
    undo = ws.run("restore", emergency, "--yes", "--json", check=True)
    assert json.loads(undo.stdout)["result"] == "PASS"
    with _as_operator(ws) as conn:
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone()[0] == 750


def test_a_write_after_the_emergency_backup_means_a_fresh_safety_backup(ws: Workspace) -> None:
    good = _backup(ws)["name"]
    emergency = _backup(ws, "--kind", "emergency")["name"]
    with _as_operator(ws) as conn:
        conn.execute("INSERT INTO public.customers (name) VALUES ('written after')")
    proc = ws.run("restore", good, "--yes", "--safety-backup", emergency)
    assert proc.returncode == 0, proc.stderr
    assert f"{emergency} cannot stand in for one" in proc.stderr + proc.stdout
    end = _restore_end(ws)
    fresh = end["safety_backup"]
    assert fresh != emergency and fresh.endswith("_emergency_pre_rollback")
    assert "transaction(s) have ended in the cluster" in end["safety_note"]
    # The fresh one holds the row the emergency backup does not.
    meta = json.loads((ws.backup_dir / f"{fresh}.backup.meta").read_text())
    rows = {t["name"]: t["rows"] for t in meta["tables"]}
    assert rows["customers"] == 201


def test_what_keeps_a_backup_from_standing_in(ws: Workspace, quiet: Server) -> None:
    emergency = _backup(ws, "--kind", "emergency")["name"]
    settings = load_settings(env_file=ws.env_file, environ=clean_env())
    meta = json.loads((ws.backup_dir / f"{emergency}.backup.meta").read_text())
    snapshot = meta["snapshot"]
    assert snapshot["xip"] == [] and snapshot["xmax"] > 0
    with _as_operator(ws) as conn:
        assert decide(settings, conn, emergency).entry is not None
        # A write still in progress (its transaction has an ID, nothing has committed).
        with _as_operator(ws) as writer:
            writer.execute("BEGIN")
            writer.execute("INSERT INTO public.customers (name) VALUES ('in flight')")
            why = decide(settings, conn, emergency).why
            assert "1 transaction ID(s) have been assigned" in why, why
            writer.execute("ROLLBACK")
        assert "have ended in the cluster" in str(written_since(conn, snapshot))
        # An ANALYZE writes statistics (no rows): it counts, and the reason says it was one.
        conn.execute("ANALYZE public.customers")
        assert "among them an ANALYZE of 1 of this database's tables" in str(
            written_since(conn, snapshot))
        assert "restarted" in str(written_since(
            conn, {**snapshot, "server_started_at": "2001-01-01 00:00:00+00"}))
        assert "in progress when it was taken" in str(written_since(
            conn, {**snapshot, "xip": [snapshot["xmin"]]}))
        assert "older pgrunbook" in str(written_since(conn, None))
        assert "no local backup" in decide(settings, conn, "20000101_000000_nothing").why
    # A backup of another database never stands in, however quiet the cluster.
    other = Workspace(ws.path / "other", quiet, "postgres")
    other.path.mkdir()
    other.write_env()
    elsewhere = _backup(other)["name"]
    (ws.backup_dir / f"{elsewhere}.backup").write_bytes(
        (other.backup_dir / f"{elsewhere}.backup").read_bytes())
    (ws.backup_dir / f"{elsewhere}.backup.meta").write_bytes(
        (other.backup_dir / f"{elsewhere}.backup.meta").read_bytes())
    with _as_operator(ws) as conn:
        why = decide(settings, conn, elsewhere).why
    assert f"is a backup of 127.0.0.1:{quiet.port}/postgres, not of" in why


def test_the_cli_refuses_both_safety_options_at_once(ws: Workspace) -> None:
    proc = ws.run("restore", "latest", "--no-safety-backup", "--safety-backup", "x")
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr


async def _wait_for_screen(pilot, kind: type) -> None:  # type: ignore[no-untyped-def]
    for _ in range(400):
        if isinstance(pilot.app.screen, kind):
            return
        await pilot.pause(0.05)
    raise AssertionError(f"{kind.__name__} never came; the screen is {pilot.app.screen}")


@pytest.mark.parametrize("written", [False, True], ids=["idle", "written-between"])
async def test_the_emergency_runbook_takes_one_emergency_backup_on_an_idle_database(
        ws: Workspace, written: bool) -> None:
    """Walked with the keyboard at 80x24, with no chat webhook: both notify steps are passed
    without running and recorded as skipped; the runbook's own emergency backup stands as the
    restore's safety backup, unless rows were written after it."""
    good = _backup(ws)["name"]
    with _as_operator(ws) as conn:
        conn.execute("DELETE FROM public.orders WHERE id > 900")  # the incident
    ws.write_env(SUPABASE_DB_USER="operator", RUNBOOK_COMMAND_MAINTENANCE_ON="true",
                 RUNBOOK_COMMAND_MAINTENANCE_OFF="true")
    settings = load_settings(env_file=ws.env_file, environ=clean_env())
    app = make_app(settings)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.workers.wait_for_complete()
        app.start_runbook("emergency-restore")
        await _wait_for_screen(pilot, AskText)
        await pilot.press(*"INC-7 orders gone", "enter")
        await _wait_for_screen(pilot, RunnerScreen)
        runner = app.screen
        assert isinstance(runner, RunnerScreen)
        runner.query_one("#checklist").focus()
        await pilot.press("space", "down", "space")  # the two required items
        await pilot.press("n")
        await pilot.press("x")  # 2: maintenance on
        await wait_for_step(pilot, runner, 1, "done")
        await pilot.press("n", "n")  # 3: tell the team, passed without running
        assert runner.run_state.current == 3
        await pilot.press("x")  # 4: the emergency backup
        await wait_for_step(pilot, runner, 3, "done")
        emergency = runner.run_state.backups_taken[-1]
        if written:
            with _as_operator(ws) as conn:
                conn.execute("INSERT INTO public.customers (name) VALUES ('a late sign-up')")
        await pilot.press("n", "x")  # 5: confirm the target
        await _wait_for_screen(pilot, AskText)
        await pilot.press(*ws.dbname, "enter")
        await wait_for_step(pilot, runner, 4, "done")
        await pilot.press("n", "x")  # 6: the restore
        await _wait_for_screen(pilot, YesNo)
        await pilot.press("y")
        await wait_for_step(pilot, runner, 5, "done")
        await pilot.press("n", "x")  # 7: verify
        await wait_for_step(pilot, runner, 6, "done")
        await pilot.press("n", "k")  # 8: smoke test: no health URL here, skipped with a reason
        await _wait_for_screen(pilot, AskText)
        await pilot.press(*"no health URL in this test", "enter")
        await pilot.pause()
        await pilot.press("x")  # 9: maintenance off
        await wait_for_step(pilot, runner, 8, "done")
        await pilot.press("n", "n")  # 10: tell the team it is over, passed without running
        await pilot.pause()
        assert runner.run_state.closed  # the run is complete: its report is written
        states = {st.step.id: st for st in runner.run_state.states}
        await app.workers.wait_for_complete()
    for step in ("notify-start", "notify-done"):
        assert states[step].status == "skipped" and states[step].reason == "optional, not run"
    emergencies = [n for n in _names(ws) if "emergency" in n]
    end = _restore_end(ws)
    assert end["backup"] == good
    if written:
        assert len(emergencies) == 2 and end["safety_backup"] != emergency
        assert "could not stand in" in end["safety_note"]
    else:
        assert emergencies == [emergency] and end["safety_backup"] == emergency
        assert "reused, not taken again" in end["safety_note"]
    report = next((ws.path / "reports").glob("runbook_*_emergency-restore.md")).read_text()
    assert f"- Safety backup: {end['safety_backup']}" in report
    assert "| Tell the team | skipped |" in report
    with _as_operator(ws) as conn:
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone()[0] == 1000


# -- Team updates on a cadence (issue 15, item 4) -------------------------------------------

def test_an_update_says_the_step_the_progress_the_eta_and_the_impact() -> None:
    from datetime import UTC, datetime, timedelta

    from tui.core.incident import OperationProgress, next_due, record_update, update_text
    from tui.core.runbook import load_runbooks

    run = RunbookRun({b.id: b for b in load_runbooks()}["emergency-restore"], reason="INC-9")
    every = timedelta(minutes=30)
    assert next_due(run, every) is None  # nothing has been done yet
    run.current = 5
    t0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
    run.states[5].status, run.states[5].started = "running", t0
    assert next_due(run, every) == t0 + every
    run.impact = "checkout down"
    progress = OperationProgress("restore", 450_000_000, 1_000_000_000, 90.0)
    text = update_text(run, {"name": "prod", "database": "app"}, progress,
                       t0 + timedelta(minutes=3), every)
    assert text.startswith("Update: Emergency restore on prod (app) (INC-9).")
    assert "Step 6/10: Restore the last known good backup (running for 3 minutes)." in text
    assert "Restore 45% (450.0 MB of 1.0 GB), about 2 minutes left." in text
    assert "Impact: checkout down." in text and "Next update by 03:33 UTC." in text
    record_update(run, t0 + timedelta(minutes=3), text, posted=True)
    assert next_due(run, every) == t0 + timedelta(minutes=33)  # counted from the last one
    assert "team update posted" in run.timeline[-1][1]


@pytest.mark.parametrize("value", ["0", "-5", "soon", "nan"])
def test_a_bad_update_interval_is_one_clear_line(value: str, tmp_path: Path) -> None:
    from tui.core.errors import ConfigError
    from tui.core.incident import update_interval

    env = tmp_path / "e.env"
    env.write_text(f"SUPABASE_DB_HOST=h\nSUPABASE_DB_NAME=x\nINCIDENT_UPDATE_MINUTES={value}\n")
    with pytest.raises(ConfigError, match="INCIDENT_UPDATE_MINUTES"):
        update_interval(load_settings(env_file=env, environ=clean_env()))


async def _start_emergency_run(pilot) -> RunnerScreen:  # type: ignore[no-untyped-def]
    """The emergency runbook to its first action done (maintenance on): the cadence runs."""
    pilot.app.start_runbook("emergency-restore")
    await _wait_for_screen(pilot, AskText)
    await pilot.press(*"INC-8 slow", "enter")
    await _wait_for_screen(pilot, RunnerScreen)
    runner = pilot.app.screen
    runner.query_one("#checklist").focus()
    await pilot.press("space", "down", "space", "n", "x")
    await wait_for_step(pilot, runner, 1, "done")
    return runner


async def _until(pilot, check, what: str, seconds: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds} s for {what}")
        await pilot.pause(0.1)


async def test_updates_reach_the_webhook_on_the_cadence_and_on_demand(
        ws: Workspace, http_peer) -> None:  # type: ignore[no-untyped-def]
    url, posts = http_peer
    ws.write_env(SUPABASE_DB_USER="operator", RUNBOOK_COMMAND_MAINTENANCE_ON="true",
                 CHAT_WEBHOOK_URL=f"{url}/hook", INCIDENT_UPDATE_MINUTES="0.03")  # 1.8 s
    app = make_app(load_settings(env_file=ws.env_file, environ=clean_env()))
    async with app.run_test(size=(80, 24)) as pilot:
        await app.workers.wait_for_complete()
        runner = await _start_emergency_run(pilot)
        assert "next team update" in str(runner.query_one("#step-status").render())
        await _until(pilot, lambda: len(posts) >= 2, "two updates at the webhook")
        first = posts[0]["text"]
        assert first.startswith(f"Update: Emergency restore on testdb ({ws.dbname}) (INC-8 slow).")
        assert "Impact: not given." in first and "Next update by" in first
        # u: the text to edit, sent now.
        before = len(posts)
        await pilot.press("u")
        await _wait_for_screen(pilot, TeamUpdate)
        await pilot.press("space", *"Rollback", "space", *"at", "space", *"03:40.", "ctrl+s")
        await _until(pilot, lambda: any(p["text"].endswith("Rollback at 03:40.")
                                        for p in posts[before:]), "the edited update")
        updates = list(runner.run_state.updates)
        await app.workers.wait_for_complete()
    assert len(updates) >= 3 and all(u["posted"] for u in updates)
    saved = json.loads(next((ws.backup_dir / "runs").glob("*.json")).read_text())
    assert len(saved["updates"]) >= 3  # the cadence survives a dropped terminal


async def test_without_a_webhook_the_operator_is_reminded_with_the_text(ws: Workspace) -> None:
    ws.write_env(SUPABASE_DB_USER="operator", RUNBOOK_COMMAND_MAINTENANCE_ON="true",
                 INCIDENT_UPDATE_MINUTES="0.02")
    app = make_app(load_settings(env_file=ws.env_file, environ=clean_env()))
    async with app.run_test(size=(80, 24)) as pilot:
        await app.workers.wait_for_complete()
        runner = await _start_emergency_run(pilot)
        await _until(pilot, lambda: runner.run_state.updates, "a reminder")
        assert runner.run_state.updates[0]["posted"] is False
        await _until(pilot, lambda: any("TEAM UPDATE DUE" in line for line in
                                        runner.query_one("#output").lines), "the text in the log")
        assert any("Team update due" in n.message for n in app._notifications)
        await pilot.press("u")
        await _wait_for_screen(pilot, TeamUpdate)
        await pilot.press("ctrl+s")
        await _until(pilot, lambda: any("copy it to #incidents" in line for line in
                                        runner.query_one("#output").lines), "the copied text")
