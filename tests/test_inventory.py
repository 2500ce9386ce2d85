"""`pgrunbook list` and `pgrunbook audit`: problems are shown, never hidden; secrets redacted."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from tests.conftest import Workspace
from tui.core.audit import AuditLog, redact


def _names(ws: Workspace, *args: str) -> list[dict]:
    return json.loads(ws.run("list", "--json", *args, check=True).stdout)


def test_list_shows_every_problem(workspace: Workspace) -> None:
    for name in ("first", "second", "third", "fourth"):
        workspace.run("backup", name, check=True)
    by_label = {e["name"].split("_", 2)[2]: e for e in _names(workspace)}
    assert list(by_label) == ["fourth", "third", "second", "first"]  # newest first
    for entry in by_label.values():
        assert entry["problems"] == [] and len(entry["sha256"]) == 64
        assert {"name", "kind", "created_at", "size_bytes", "path", "sha256", "problems"} <= \
            set(entry)

    first, second, third, fourth = (Path(by_label[k]["path"]) for k in
                                    ("first", "second", "third", "fourth"))
    Path(str(first) + ".meta").unlink()                       # metadata missing
    Path(str(second) + ".meta").write_text("{not json")       # metadata unreadable
    third.unlink()                                            # archive missing
    with fourth.open("r+b") as f:                             # bit flip, same size
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0x01]))
    # An abandoned partial file from a backup that was SIGKILLed.
    (workspace.backup_dir / ".20250101_000000_x.backup.partial-0badf00d").write_bytes(b"x")

    problems = {e["name"]: e["problems"] for e in _names(workspace)}
    assert problems[first.name[:-7]] == ["metadata missing"]
    assert problems[second.name[:-7]][0].startswith("metadata unreadable")
    assert problems[third.name[:-7]] == ["archive missing"]
    assert problems[fourth.name[:-7]] == []  # only --verify reads whole archives
    assert problems["20250101_000000_x.backup"][0].startswith("partial file")
    verified = {e["name"]: e["problems"] for e in _names(workspace, "--verify")}
    assert verified[fourth.name[:-7]] == ["checksum mismatch"]

    text = workspace.run("list", check=True).stdout
    assert "metadata missing" in text and "archive missing" in text
    assert "4 of 5 backups have problems" in text


def test_a_partial_file_being_written_is_not_reported(tmp_path: Path, workspace: Workspace) -> None:
    workspace.backup_dir.mkdir(mode=0o700)
    partial = workspace.backup_dir / ".20250101_000000_live.backup.partial-12345678"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a running backup holds it
    try:
        assert _names(workspace) == []
    finally:
        os.close(fd)
    assert len(_names(workspace)) == 1


def test_audit_redacts_secrets(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, secrets=["hunter2"])
    rec = log.start("backup", target={"name": "x"}, reason="pw hunter2 typed by mistake",
                    arguments={"url": "postgresql://u:topsecret@h/db", "password": "p"})
    rec.finish("failed", "could not connect with hunter2")
    text = (tmp_path / "audit.log").read_text()
    for secret in ("hunter2", "topsecret", '"p"'):
        assert secret not in text
    assert oct(os.stat(tmp_path / "audit.log").st_mode & 0o777) == "0o600"
    entries = list(log.entries())
    assert [e["event"] for e in entries] == ["start", "end"]
    assert entries[0]["id"] == entries[1]["id"]
    assert redact({"nested": ["postgres://a:b@c/d"]}) == {"nested": ["postgres://a:********@c/d"]}
