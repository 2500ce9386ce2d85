"""Operations outlive the terminal: a restore whose terminal hangs up runs to its end (verified,
audited, cleaned up) and `jobs`/`attach` show it; a job killed with -9 is reconciled by the
next command; two viewers follow one job. Real PostgreSQL, the real CLI, a real tmux."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shlex
import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import PASSWORD, Server, Workspace, clean_env
from tests.test_backup import _wait_for
from tests.test_restore import _pids_of
from tui.core import events
from tui.core.journal import decode_event, encode_event


def _backup(ws: Workspace) -> str:
    out = ws.run("backup", "--json", check=True).stdout
    return str(json.loads(out)["name"])


def _restoring(server: Server, dbname: str) -> bool:
    """pg_restore is running and waits on the test's advisory lock (its first CREATE TABLE)."""
    with server.connect() as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND "
                           "wait_event = 'advisory'", [dbname]).fetchone()
        return bool(row and row[0])


def _job_states(ws: Workspace) -> list[dict[str, Any]]:
    proc = ws.run("jobs", "--json", check=True)
    return list(json.loads(proc.stdout))


def _restore_job(ws: Workspace) -> dict[str, Any]:
    return next(j for j in _job_states(ws) if j["operation"] == "restore")


def _audit(ws: Workspace) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (ws.backup_dir / "audit.log").read_text().splitlines()]


def _open_records(ws: Workspace) -> list[dict[str, Any]]:
    ended = {e["id"] for e in _audit(ws) if e["event"] == "end"}
    return [e for e in _audit(ws) if e["event"] == "start" and e["id"] not in ended]


def kill_viewer_and_job(viewer: subprocess.Popen[Any], pid: int) -> None:
    """SIGKILL the viewer's process group (an SSH session gone), then the detached job (out of
    memory), and wait until the job is dead (gone, or a zombie nobody reaps yet)."""
    os.killpg(viewer.pid, signal.SIGKILL)
    viewer.wait(timeout=10)
    os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: not Path(f"/proc/{pid}/stat").exists()
              or Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z",
              "the job to die")


def _leftovers(ws: Workspace) -> list[Path]:
    return list(ws.backup_dir.glob(".*partial-*"))


def _tmux(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tmux", "-S", str(sock), *args], capture_output=True, text=True,
                          check=False)


def test_events_round_trip_through_the_journal() -> None:
    samples = [
        events.PhaseStarted("restoring", "pg_restore --jobs 2"),
        events.Notice("warning", "careful"),
        events.DumpProgress(10, 1.0, 10.0, 100, 9.0),
        events.ToolOutput("pg_dump", "line"),
        events.BackupFinished("n", "/p", 1, "ab", 0.5),
        events.Progress("checksum", 1, 2, 0.1),
        events.RestoreLine("pg_restore: creating TABLE", True),
        events.TableChecked("public", "t", "count", 0.01, 5, True),
        events.OperationStarted("restore", "abc", "/log"),
        events.OperationEnded("restore", "abc", "ok"),
        events.TargetChanging("prod", "postgres", "s", "pgrunbook restore s"),
    ]
    kinds = {c for c in vars(events).values()
             if isinstance(c, type) and issubclass(c, events.Event) and c is not events.Event}
    assert {type(e) for e in samples} == kinds, "a new event type needs a sample here"
    for event in samples:
        record = json.loads(json.dumps(encode_event(event)))
        assert decode_event(record) == event
        # One text per event, shared by the CLI, the TUI and the log: never the bare repr.
        assert not event.describe().startswith(type(event).__name__), event
    assert decode_event({"kind": "event", "type": "NoSuchEvent", "data": {}}) is None


def test_a_result_pickled_for_viewers_withholds_the_password(workspace: Workspace) -> None:
    from tui.core.settings import load_settings
    from tui.core.targets import pickle_with_secrets

    settings = load_settings(env_file=workspace.env_file, environ=clean_env())
    on_disk = pickle.dumps(dataclasses.replace(settings.target))
    assert PASSWORD.encode() not in on_disk
    assert pickle.loads(on_disk).password.reveal() == ""
    piped = pickle.loads(pickle_with_secrets(settings))
    assert piped.target.password.reveal() == PASSWORD


def test_a_hang_up_leaves_the_restore_running_to_its_verified_end(
        workspace: Workspace, server: Server, tmp_path: Path) -> None:
    name = _backup(workspace)
    holder = server.block_create_table(workspace.dbname, 4343)
    sock = tmp_path / "tmux.sock"
    env = shlex.join(f"{k}={v}" for k, v in clean_env().items())
    argv = shlex.join(workspace.cli_argv("restore", "latest", "--yes", "--terminate-connections",
                                         "--reason", "INC-7 drill"))
    try:
        _tmux(sock, "new-session", "-d", "-s", "t", "-x", "80", "-y", "24",
              f"cd {shlex.quote(str(workspace.path))} && env -i {env} {argv}; sleep 600")
        _wait_for(lambda: _restoring(server, workspace.dbname), "pg_restore to start", 60)
        viewer = _tmux(sock, "list-panes", "-t", "t", "-F", "#{pane_pid}").stdout.split()
        assert viewer
        copies = list(workspace.backup_dir.glob(".*.restore.partial-*"))
        assert copies, "the decompressed copy should exist while pg_restore runs"
        _tmux(sock, "kill-server")  # the SSH session drops: SIGHUP to the terminal's processes
        _wait_for(lambda: not Path(f"/proc/{viewer[0]}").exists(), "the terminal to close")
        job = _restore_job(workspace)
        assert job["status"] == "running", job
    finally:
        holder.close()  # pg_restore goes on
        _tmux(sock, "kill-server")
    _wait_for(lambda: _restore_job(workspace)["status"] != "running", "the restore to end", 120)
    job = _restore_job(workspace)
    assert job["status"] == "ok" and job["exit_code"] == 0, job
    assert job["summary"].startswith(f"PASS: {name} restored into testdb"), job
    assert job["reason"] == "INC-7 drill" and job["operator"]["user"]
    ends = [e for e in _audit(workspace) if e["operation"] == "restore" and e["event"] == "end"]
    assert ends[-1]["result"] == "ok" and ends[-1]["backup"] == name
    assert not _open_records(workspace), "every audit record is closed"
    assert not _leftovers(workspace), "temp files were left behind"
    lock = workspace.backup_dir / ".lock-testdb"
    assert not lock.exists() or lock.read_text() == ""
    # The operator reconnects: the job shows as finished, and attach gives its verdict.
    listing = workspace.run("jobs")
    assert job["id"] in listing.stdout and "PASS" in listing.stdout
    attached = workspace.run("attach")
    assert attached.returncode == 0, attached.stderr
    assert "VERIFICATION PASS" in attached.stdout and f"Restore of {name}" in attached.stdout
    assert "· restoring" in attached.stderr  # what it printed while nobody watched
    assert PASSWORD not in (workspace.backup_dir / "jobs" / job["id"] / "journal.jsonl"
                            ).read_text()


def test_a_killed_restore_job_is_reconciled_by_the_next_command(
        workspace: Workspace, server: Server) -> None:
    _backup(workspace)
    holder = server.block_create_table(workspace.dbname, 4444)
    viewer = subprocess.Popen(workspace.cli_argv("restore", "latest", "--yes",
                                                 "--terminate-connections"),
                              cwd=workspace.path, env=clean_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(lambda: _restoring(server, workspace.dbname), "pg_restore to start", 60)
        restore_pids = [int(p) for p in _pids_of("pg_restore")]
        job = _restore_job(workspace)
        # The viewer goes first (its SSH session died), then the job itself (out of memory).
        kill_viewer_and_job(viewer, job["pid"])
        assert _leftovers(workspace), "the dead job's temp files are still there"
        nxt = workspace.run("list")
    finally:
        holder.close()
    assert nxt.returncode == 0
    assert "restore job" in nxt.stderr and "INCOMPLETE" in nxt.stderr, nxt.stderr
    assert "emergency_pre_rollback" in nxt.stderr and "pgrunbook --target testdb restore" \
        in nxt.stderr
    for pid in restore_pids:
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z", \
            "pg_restore outlived its job"
    assert not _leftovers(workspace)
    state = _restore_job(workspace)
    assert state["status"] == "abandoned" and state["exit_code"] == 1
    records = [e for e in _audit(workspace) if e["event"] == "end" and e["result"] == "abandoned"]
    assert {e["operation"] for e in records} == {"restore"}, records
    assert records[0]["last_phase"] and records[0]["target"]["name"] == "testdb"
    assert not _open_records(workspace)
    # Once is enough: the next command has nothing more to say.
    again = workspace.run("list")
    assert "INCOMPLETE" not in again.stderr
    shown = workspace.run("attach", state["id"])
    assert shown.returncode == 1 and "INCOMPLETE" in shown.stderr


def test_two_viewers_follow_one_restore(workspace: Workspace, server: Server) -> None:
    name = _backup(workspace)
    holder = server.block_create_table(workspace.dbname, 4545)
    starter = subprocess.Popen(workspace.cli_argv("restore", "latest", "--yes",
                                                  "--terminate-connections"),
                               cwd=workspace.path, env=clean_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _restoring(server, workspace.dbname), "pg_restore to start", 60)
        second = subprocess.Popen(workspace.cli_argv("attach"), cwd=workspace.path,
                                  env=clean_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        assert second.stderr is not None
        header = second.stderr.readline()  # printed once it found the job, before following
        assert "restore of testdb" in header and "running" in header, header
    finally:
        holder.close()
    out1, err1 = starter.communicate(timeout=120)
    # The rest of what the second viewer printed, through the same file object that read its
    # first line (communicate() would skip what that read had buffered).
    assert second.stdout is not None
    err2 = header + second.stderr.read()
    out2 = second.stdout.read()
    second.wait(timeout=120)
    assert starter.returncode == 0 and second.returncode == 0, (err1, err2)
    for out in (out1, out2):
        assert "VERIFICATION PASS" in out and f"Restore of {name}" in out
    assert "· restoring" in err2
