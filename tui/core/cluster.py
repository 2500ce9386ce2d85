"""A throwaway PostgreSQL cluster: private directory, free port on 127.0.0.1, reliable teardown.

Used by the test suite, by `pgrunbook demo`, and by restore drills. When running as root the
server runs as the `postgres` OS user (initdb and pg_ctl refuse root).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tui.core.errors import OperationFailed
from tui.core.fsutil import note_temp
from tui.core.pgtools import server_binaries, tool_version


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        return [runuser, "-u", "postgres", "--", *argv]
    return argv


class ThrowawayCluster:
    """Start with `start()` (or `with`), stop and remove with `stop()`."""

    def __init__(
        self,
        *,
        major: int | None = None,
        password: str | None = None,
        base_dir: Path | None = None,
        fsync: bool = False,
        extra_conf: dict[str, str] | None = None,
        superuser: str = "postgres",
        bindir: Path | None = None,
    ) -> None:
        """`superuser` is the bootstrap role initdb creates (Supabase's is `supabase_admin`);
        `bindir` names the server binaries to use instead of searching for them."""
        self.major_wanted = major
        self.bindir_wanted = bindir
        self.password = password
        self.fsync = fsync
        self.extra_conf = dict(extra_conf or {})
        self.base_dir = base_dir
        self.port = 0
        self.host = "127.0.0.1"
        self.user = superuser
        self.major = 0
        self.bindir: Path | None = None
        self._owned_base = base_dir is None
        self._started = False

    # -- paths ---------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "server.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def _bin(self, name: str) -> Path:
        """A server binary by its real path: the server runs as `postgres`, which may not
        enter a directory of links that points at it (PG_BIN_DIR in a private directory)."""
        assert self.bindir is not None
        return (self.bindir / name).resolve()

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> ThrowawayCluster:
        if self.bindir_wanted is not None:
            self.bindir = self.bindir_wanted
            version = tool_version(self.bindir / "postgres")
            if version is None:
                raise OperationFailed(f"{self.bindir} holds no working PostgreSQL server.",
                                      "Point it at a directory with initdb, pg_ctl, postgres.")
            self.major = version[0]
        else:
            self.major, self.bindir = server_binaries(self.major_wanted)
        if self.base_dir is None:
            # Short path: the unix socket lives here and must stay under 107 characters.
            self.base_dir = note_temp(Path(tempfile.mkdtemp(prefix="pgrb-")))
        self.base_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            os.chown(self.base_dir, pg.pw_uid, pg.pw_gid)
        try:
            self._initdb()
            self._start_server()
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)
        return self

    def _run(self, argv: list[str], what: str) -> None:
        proc = subprocess.run(
            _as_server_user(argv), capture_output=True, text=True, check=False, timeout=120
        )
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise OperationFailed(
                f"could not {what} a throwaway PostgreSQL in {self.base_dir}: {' / '.join(tail)}",
                "Check that the PostgreSQL server package is installed and /tmp is writable.",
            )

    def _initdb(self) -> None:
        assert self.bindir is not None and self.base_dir is not None
        argv = [str(self._bin("initdb")), "-D", str(self.data_dir), "-U", self.user,
                "-E", "UTF8", "--locale=C.UTF-8", "--no-sync", "--no-instructions"]
        pwfile = self.base_dir / "pwfile"
        if self.password:
            pwfile.write_text(self.password + "\n", encoding="utf-8")
            os.chmod(pwfile, 0o600)
            if os.geteuid() == 0:
                pg = pwd.getpwnam("postgres")
                os.chown(pwfile, pg.pw_uid, pg.pw_gid)
            argv += ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        else:
            argv += ["--auth=trust"]
        try:
            self._run(argv, "initialise")
        finally:
            pwfile.unlink(missing_ok=True)

    def _start_server(self) -> None:
        assert self.bindir is not None and self.base_dir is not None
        last_error: OperationFailed | None = None
        for _attempt in range(5):
            self.port = free_port()
            opts = [
                f"-p {self.port}",
                f"-k {self.base_dir}",
                "-c listen_addresses=127.0.0.1",
                f"-c fsync={'on' if self.fsync else 'off'}",
                "-c synchronous_commit=off" if not self.fsync else "",
                "-c full_page_writes=off" if not self.fsync else "",
            ]
            opts += [f"-c {k}={v}" for k, v in self.extra_conf.items()]
            argv = [str(self._bin("pg_ctl")), "-D", str(self.data_dir), "-l",
                    str(self.log_file), "-w", "-t", "60", "start", "-o",
                    " ".join(o for o in opts if o)]
            try:
                self._run(argv, "start")
            except OperationFailed as exc:
                last_error = exc
                log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
                if "could not bind" in log or "already in use" in log:
                    self.log_file.unlink(missing_ok=True)
                    continue
                raise
            self._started = True
            return
        assert last_error is not None
        raise last_error

    def stop(self) -> None:
        """Stop the server and remove its directory. Safe to call twice."""
        atexit.unregister(self.stop)
        if self.base_dir is None:
            return
        if self._started and self.bindir is not None:
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                subprocess.run(
                    _as_server_user([str(self._bin("pg_ctl")), "-D", str(self.data_dir),
                                     "-m", "fast", "-w", "-t", "30", "stop"]),
                    capture_output=True, check=False, timeout=60,
                )
            self._kill_leftover()
            self._started = False
        if self._owned_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def _kill_leftover(self) -> None:
        pidfile = self.data_dir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                os.kill(pid, 0)
                time.sleep(0.05)

    def __enter__(self) -> ThrowawayCluster:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- a cluster that outlives this process (the demo) -------------------------------------
    def detach(self) -> dict[str, object]:
        """Keep the server running after this process exits; returns what `attach` needs."""
        atexit.unregister(self.stop)
        self._owned_base = False
        return {"base_dir": str(self.base_dir), "port": self.port, "major": self.major,
                "bindir": str(self.bindir)}

    @classmethod
    def attach(cls, state: dict[str, object]) -> ThrowawayCluster:
        cluster = cls()
        cluster.base_dir = Path(str(state["base_dir"]))
        cluster.port = int(str(state["port"]))
        cluster.major = int(str(state["major"]))
        cluster.bindir = Path(str(state["bindir"]))
        cluster._started = True
        cluster._owned_base = True
        return cluster

    def is_running(self) -> bool:
        if self.base_dir is None or self.bindir is None:
            return False
        proc = subprocess.run(
            _as_server_user([str(self._bin("pg_ctl")), "-D", str(self.data_dir), "status"]),
            capture_output=True, check=False,
        )
        return proc.returncode == 0


def new_password() -> str:
    return secrets.token_urlsafe(18)


def save_state(path: Path, state: dict[str, object]) -> None:
    from tui.core.fsutil import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(state, indent=2).encode())
