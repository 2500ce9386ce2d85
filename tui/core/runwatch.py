"""Following a runbook run from another process, read-only (`pgrunbook tui --watch`, and what
`pgrunbook serve` shows the incident lead): the newest open run on a target, read again from its
saved file (BACKUP_DIR/runs/<id>.json, `tui.core.runstate`) whenever that changes. Nothing here
writes: the watcher only looks at what the operator's app saves after every change."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from tui.core import runstate
from tui.core.runbook import Runbook, RunbookRun

# What a file looks like from outside: a save (write and rename) changes at least one of them.
Signature = tuple[int, int, int] | None


def _stat(path: Path) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ino, st.st_size


class RunWatcher:
    """`poll()` looks (cheaply: two stat calls when nothing changed) and says whether `run`
    changed. `run` is the newest open run on `target` (every target when None); once that run
    is closed and no other is open, it stays, closed, so the watcher sees how it ended."""

    def __init__(self, backup_dir: Path, runbooks: list[Runbook],
                 target: dict[str, Any] | None = None) -> None:
        self.directory = runstate.runs_dir(backup_dir)
        self.runbooks = runbooks
        self.target = target
        self.run: RunbookRun | None = None
        self._seen: tuple[Signature, Signature] | None = None
        self._data: dict[str, Any] | None = None

    def _file(self) -> Path | None:
        return self.directory / f"{self.run.id}.json" if self.run is not None else None

    def _signature(self) -> tuple[Signature, Signature]:
        path = self._file()
        return _stat(self.directory), _stat(path) if path is not None else None

    def poll(self) -> bool:
        """Read again what changed on disk; True when the run to show is another one or its
        saved state differs from the last poll's."""
        seen = self._signature()
        if seen == self._seen:
            return False
        self._seen = seen
        run = self._newest_open() or self._reread()
        data = runstate.to_json(run) if run is not None else None
        if data == self._data:
            return False
        self.run, self._data = run, data
        self._seen = self._signature()  # the run shown may be another file now
        return True

    def _newest_open(self) -> RunbookRun | None:
        runs = runstate.unfinished(self.directory.parent, self.runbooks, self.target)
        return runs[0] if runs else None

    def _reread(self) -> RunbookRun | None:
        """The run shown so far, as saved now (closed, most likely), or None if it is gone."""
        path = self._file()
        if path is None:
            return None
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(path.read_text(encoding="utf-8"))
            return runstate.from_json(data, {b.id: b for b in self.runbooks})
        return None

    def job_id(self) -> str | None:
        """The job the run most recently started: the current step's, else the nearest earlier
        step's (its output stays in view until the next job starts)."""
        run = self.run
        if run is None:
            return None
        for st in reversed(run.states[:run.current + 1]):
            if st.job_id:
                return st.job_id
        return None
