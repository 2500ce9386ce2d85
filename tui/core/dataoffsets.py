"""Data offsets for a custom-format archive that pg_dump wrote through a pipe.

pg_dump can record where each table's data starts only when it writes to a file it can seek
in; written into zstd through a pipe (pgrunbook's container, for pg_dump 15 and older), every
TABLE DATA entry says "position not set". A parallel pg_restore then makes each of its jobs
read through the archive, block header by block header (one per row with --compress=0), to
find the data it was given, and schedules the tables without knowing their sizes.

pgrunbook restores from its own decompressed copy, so it can fill those positions in. While
zstd writes that copy, `DataIndexer` reads it behind zstd: the header and table of contents,
then each data block's start. A block starts right after the previous one's end marker (a
zero length) with its type and dump id; COPY text holds no NUL bytes, so that sequence cannot
occur inside table data. Once zstd is done, `patch` writes the positions into the copy's table
of contents in place (the fields have a fixed size), exactly as pg_dump would have. Anything
unexpected (another archive version, large objects, a block not where it should be) leaves the
copy as it is: pg_restore then reads through it as before, only slower.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from tui.core.archive import CUSTOM_MAGIC

# The archive version whose table of contents this reads: 1.14, pg_dump 12 to 15. pg_dump 16
# and newer compress with zstd itself and write to the file, with the offsets.
VERSIONS = ((1, 14),)
POS_NOT_SET, POS_SET, NO_DATA = 1, 2, 3  # a TOC entry's data state (K_OFFSET_*)
BLK_DATA = 1
READ_SIZE = 4 << 20


class NotIndexable(Exception):
    """The archive cannot be indexed safely; it is restored as it is."""


@dataclass
class DataEntry:
    dump_id: int
    state_at: int  # file position of the entry's data-state byte
    offset: int | None = None  # where its data block starts, once found


class _Tail:
    """Reads a file that another process is still writing, waiting for bytes as they come."""

    def __init__(self, fd: int, writing: Callable[[], bool], stop: threading.Event) -> None:
        self.fd = fd
        self.writing = writing
        self.stop = stop

    def _wait(self) -> bool:
        """Wait a moment for the writer; False once it has finished."""
        if not self.writing():
            return False
        if self.stop.wait(0.01):
            raise NotIndexable("stopped")
        return True

    def read(self, offset: int, size: int) -> bytes:
        """`size` bytes at `offset`, or fewer only at the end of the finished file."""
        buf = bytearray(size)
        return bytes(buf[:self.read_into(memoryview(buf), offset, size)])

    def read_into(self, buf: memoryview, offset: int, minimum: int) -> int:
        """Fill `buf` from `offset` with what is there, once at least `minimum` bytes are (or
        the finished file has fewer); the number of bytes read."""
        n = os.preadv(self.fd, [buf], offset)
        while n < minimum:
            writing = self._wait()
            n = os.preadv(self.fd, [buf], offset)
            if not writing:
                break
        return n


class _Cursor:
    """ReadInt/ReadStr of pg_dump's archive format, over a `_Tail`."""

    def __init__(self, tail: _Tail, pos: int) -> None:
        self.tail = tail
        self.pos = pos
        self.int_size = 4

    def take(self, n: int) -> bytes:
        data = self.tail.read(self.pos, n)
        if len(data) < n:
            raise NotIndexable("the archive ends inside its table of contents")
        self.pos += n
        return data

    def byte(self) -> int:
        return self.take(1)[0]

    def int(self) -> int:
        raw = self.take(1 + self.int_size)
        value = int.from_bytes(raw[1:], "little")
        return -value if raw[0] else value

    def str(self) -> str | None:
        n = self.int()
        if n < 0:
            return None
        if n > 1 << 30:
            raise NotIndexable("implausible string length in the table of contents")
        return self.take(n).decode("utf-8", errors="replace")


class DataIndexer:
    """Finds the data blocks of the archive being written to `fd` (run in a thread)."""

    def __init__(self, fd: int, writing: Callable[[], bool]) -> None:
        self.stop = threading.Event()
        self.tail = _Tail(fd, writing, self.stop)
        self.fd = fd
        self.int_size = 4
        self.off_size = 8
        self.entries: list[DataEntry] = []  # table data whose position is not set
        self.all_data: list[DataEntry] = []  # every entry with data, set or not
        self._buf = bytearray(READ_SIZE)

    def run(self) -> list[DataEntry]:
        """The entries whose positions are to be set, each with its block found."""
        cur = self._read_toc()
        data_start = cur.pos
        # TOC order is the order pg_dump (without --jobs) wrote the data blocks in.
        pending = self.entries
        if not pending:
            return []
        end_marker = bytes(1 + self.int_size)  # a zero length: the end of a block's data
        pos = data_start
        for i, entry in enumerate(pending):
            header = self._block_header(entry.dump_id)
            if i == 0:
                found = data_start if self.tail.read(pos, len(header)) == header else -1
            else:
                at = self._find(end_marker + header, pos)
                found = -1 if at < 0 else at + len(end_marker)
            if found < 0:
                raise NotIndexable(f"the data of entry {entry.dump_id} was not found in order")
            entry.offset = found
            pos = found + len(header)
        return pending

    def _block_header(self, dump_id: int) -> bytes:
        """A data block's start: its type, then the dump id as pg_dump writes an int."""
        return bytes([BLK_DATA, 0]) + dump_id.to_bytes(self.int_size, "little")

    def _read_toc(self) -> _Cursor:
        cur = _Cursor(self.tail, 0)
        if cur.take(len(CUSTOM_MAGIC)) != CUSTOM_MAGIC:
            raise NotIndexable("not a custom-format archive")
        vmaj, vmin, _rev = cur.byte(), cur.byte(), cur.byte()
        if (vmaj, vmin) not in VERSIONS:
            raise NotIndexable(f"archive version {vmaj}.{vmin} is not indexed")
        self.int_size = cur.int_size = cur.byte()
        self.off_size = cur.byte()
        if cur.byte() != 1:  # archCustom
            raise NotIndexable("not a custom-format archive")
        if not 1 <= self.int_size <= 8 or not 1 <= self.off_size <= 8:
            raise NotIndexable("unexpected integer sizes")
        if cur.int() != 0:  # compression level: the container path dumps with --compress=0
            raise NotIndexable("the archive's data is compressed by pg_dump")
        for _ in range(7):  # creation time
            cur.int()
        for _ in range(3):  # database name, server version, pg_dump version
            cur.str()
        count = cur.int()
        if not 0 <= count <= 10_000_000:
            raise NotIndexable("implausible number of entries")
        for _ in range(count):
            dump_id = cur.int()
            cur.int()  # had a data dumper
            cur.str()  # catalog tableoid
            cur.str()  # oid
            cur.str()  # tag
            desc = cur.str() or ""
            cur.int()  # section
            for _ in range(6):  # defn, drop, copy statement, namespace, tablespace, tableam
                cur.str()
            cur.str()  # owner
            cur.str()  # "false" (with oids)
            while cur.str() is not None:  # dependencies, to an empty string
                pass
            state_at = cur.pos
            state = cur.byte()
            cur.take(self.off_size)
            if state in (POS_NOT_SET, POS_SET):
                self.all_data.append(DataEntry(dump_id, state_at))
            if state == POS_NOT_SET:
                if desc != "TABLE DATA":
                    raise NotIndexable(f"{desc} data (only table data is indexed)")
                self.entries.append(self.all_data[-1])
            elif state not in (POS_SET, NO_DATA):
                raise NotIndexable("unexpected data state in the table of contents")
        return cur

    def _find(self, pattern: bytes, start: int) -> int:
        """The first position of `pattern` at or after `start`, reading behind the writer into
        one buffer (no allocation per read)."""
        buf = self._buf
        pos = start
        while True:
            n = self.tail.read_into(memoryview(buf), pos, len(pattern))
            at = buf.find(pattern, 0, n)
            if at >= 0:
                return pos + at
            if n < len(pattern):
                return -1
            pos += n - len(pattern) + 1

    def patch(self, entries: list[DataEntry]) -> None:
        """Write the found positions into the finished file's table of contents, after checking
        each block header once more."""
        for e in entries:
            assert e.offset is not None
            header = self._block_header(e.dump_id)
            if os.pread(self.fd, len(header), e.offset) != header:
                raise NotIndexable(f"the data of entry {e.dump_id} moved")
            if os.pread(self.fd, 1, e.state_at) != bytes([POS_NOT_SET]):
                raise NotIndexable("the table of contents changed")
        for e in entries:
            assert e.offset is not None
            field = bytes([POS_SET]) + e.offset.to_bytes(self.off_size, "little")
            os.pwrite(self.fd, field, e.state_at)
