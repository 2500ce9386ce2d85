"""Decompressing a zstd-contained archive to a seekable temp file for parallel pg_restore
(`Unpacker`), in the background while the target is prepared, with each table's data located
in the copy so that pg_restore's jobs seek to it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path

from tui.core.archive import container_of
from tui.core.dataoffsets import DataEntry, DataIndexer, NotIndexable
from tui.core.encryption import Cipher, KeyUnavailable, Step, decrypt_step
from tui.core.errors import OperationFailed
from tui.core.events import Emit, Notice, PhaseStarted
from tui.core.fsutil import temp_path_for
from tui.core.inventory import BackupEntry
from tui.core.settings import Settings


class Unpacker:
    """The zstd container decompressed to a hidden temp file beside it (parallel pg_restore
    needs a regular file it can seek in). It starts beside the checksum and runs while the
    target is checked, confirmed and backed up, none of which it touches; the restore awaits it
    (so only an archive whose checksum passed is ever restored). Behind zstd, a thread finds
    where each table's data starts (`DataIndexer`), and once zstd is done those positions are
    written into the copy's table of contents, as pg_dump writes them into a file it can seek
    in: pg_restore's jobs then seek to their tables instead of reading through the archive, and
    schedule the largest first. Whatever happens, the temp file is removed at the end."""

    def __init__(self, settings: Settings, entry: BackupEntry,
                 cipher: Cipher | None = None) -> None:
        self.settings = settings
        self.entry = entry
        self.cipher = cipher  # an encrypted backup is decrypted into the copy (and unpacked)
        self.steps: list[asyncio.subprocess.Process] = []
        self._step: Step | None = None
        self.path: Path | None = None
        self.fd: int | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.indexer: DataIndexer | None = None
        self.index_task: asyncio.Future[list[DataEntry]] | None = None

    async def start(self, emit: Emit) -> None:
        container = container_of(self.entry.path)
        encrypted = container in ("gpg", "age")
        inner = str(((self.entry.meta or {}).get("archive") or {}).get("container") or "custom")
        if not encrypted and container != "zstd":
            return
        if encrypted and self.cipher is None:
            raise KeyUnavailable(f"{self.entry.name} is encrypted ({container}) and no key was "
                                 "found for it.", "Check the BACKUP_GPG_* or BACKUP_AGE_* "
                                 "settings. Nothing was changed.")
        unzstd = container == "zstd" or (encrypted and inner == "zstd")
        if unzstd and shutil.which("zstd") is None:
            raise OperationFailed(f"{self.entry.name} is zstd-compressed and zstd is not "
                                  "installed.", "Install it: apt install zstd.")
        self.path = temp_path_for(self.settings.backup_dir / f"{self.entry.name}.restore")
        what = "decrypting and decompressing" if encrypted and unzstd else \
            "decrypting" if encrypted else "decompressing"
        emit(PhaseStarted(what.split(" ")[0], f"{what} to a seekable file for parallel "
                                              "pg_restore, in the background"))
        # The last process writes into a descriptor of ours: the file stays the one created
        # here, 0600 whatever the umask (zstd -o would replace it with a file of its own).
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        if encrypted:
            assert self.cipher is not None
            self.proc = await self._decrypt(unzstd)
        else:
            self.proc = await asyncio.create_subprocess_exec(
                "zstd", "-dqc", str(self.entry.path),
                stdout=self.fd, stderr=asyncio.subprocess.PIPE,
                stdin=asyncio.subprocess.DEVNULL, process_group=0)
        proc = self.proc
        self.indexer = DataIndexer(self.fd, lambda: proc.returncode is None)
        self.index_task = asyncio.ensure_future(asyncio.to_thread(self.indexer.run))

    async def _decrypt(self, unzstd: bool) -> asyncio.subprocess.Process:
        """decrypt < archive [| zstd -dc] > the copy; returns the last process (the others are
        in `steps`, in its process group)."""
        assert self.cipher is not None and self.fd is not None
        step = decrypt_step(self.cipher)
        self._step = step
        try:
            with self.entry.path.open("rb") as src:
                if not unzstd:
                    return await asyncio.create_subprocess_exec(
                        *step.argv, stdin=src, stdout=self.fd, stderr=asyncio.subprocess.PIPE,
                        process_group=0, pass_fds=step.pass_fds())
                r, w = os.pipe()
                try:
                    dec = await asyncio.create_subprocess_exec(
                        *step.argv, stdin=src, stdout=w, stderr=asyncio.subprocess.PIPE,
                        process_group=0, pass_fds=step.pass_fds())
                    self.steps.append(dec)
                    return await asyncio.create_subprocess_exec(
                        "zstd", "-dqc", stdin=r, stdout=self.fd, stderr=asyncio.subprocess.PIPE,
                        process_group=dec.pid)
                finally:
                    os.close(r)
                    os.close(w)
        finally:
            step.close()

    async def archive(self, emit: Emit) -> Path:
        """The file pg_restore reads: the decompressed copy once zstd is done, or the stored
        archive itself when it is not in a container."""
        if self.proc is None or self.path is None:
            return self.entry.path
        if self.proc.returncode is None:
            emit(PhaseStarted("decompressing", "waiting for it to finish"))
        _, err = await self.proc.communicate()
        for step in self.steps:  # the decryption before zstd: a wrong key shows here first
            _, step_err = await step.communicate()
            if step.returncode != 0:
                assert self.cipher is not None
                raise OperationFailed(
                    f"could not decrypt {self.entry.name} ({self.cipher.method}): "
                    f"{step_err.decode(errors='replace').strip() or f'exit {step.returncode}'}",
                    "The file is damaged or needs another key; nothing was changed.")
        if self.proc.returncode != 0:
            raise OperationFailed(
                f"could not {'decrypt' if self.cipher and not self.steps else 'decompress'} "
                f"{self.entry.name}: "
                f"{err.decode(errors='replace').strip() or f'exit {self.proc.returncode}'}",
                f"Check free space in {self.settings.backup_dir}.",
            )
        await self._index(emit)
        return self.path

    async def _index(self, emit: Emit) -> None:
        assert self.index_task is not None and self.indexer is not None
        try:
            found = await self.index_task
            if found:
                await asyncio.to_thread(self.indexer.patch, found)
                emit(Notice("info", f"data of {len(found)} tables located in the decompressed "
                                    "copy: pg_restore's jobs seek to it"))
        except (NotIndexable, OSError) as exc:
            emit(Notice("info", f"pg_restore reads through the archive to find each table's "
                                f"data ({exc})"))

    async def discard(self) -> None:
        for proc in [*self.steps, *([self.proc] if self.proc is not None else [])]:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                await proc.wait()
        if self._step is not None:
            self._step.cleanup()
        if self.indexer is not None and self.index_task is not None:
            self.indexer.stop.set()
            with contextlib.suppress(Exception):
                await self.index_task
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
