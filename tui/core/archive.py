"""Reading an archive as stored: its container (plain custom format, or zstd around one), its
header and its table of contents, through `pg_restore --list`."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from tui.core.errors import OperationFailed

if TYPE_CHECKING:
    from tui.core.encryption import Cipher

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CUSTOM_MAGIC = b"PGDMP"


@dataclass(frozen=True)
class TocEntry:
    dump_id: int
    catalog_oid: int
    object_oid: int
    # "TABLE DATA public actor postgres": the description and names as pg_restore prints them.
    text: str
    line: str

    @cached_property
    def desc(self) -> str:
        """The entry's kind ("TABLE DATA", "FK CONSTRAINT", ...): the longest known run of its
        first words (at most four set look-ups; read for every entry of every archive)."""
        words = self.text.split(" ", _LONGEST_DESC)
        for n in range(min(_LONGEST_DESC, len(words) - 1), 0, -1):
            head = " ".join(words[:n])
            if head in _DESC_SET:
                return head
        return words[0]


# Multi-word descriptions first, so "TABLE DATA" is not read as "TABLE".
_DESCS = sorted(
    ["TABLE DATA", "TABLE", "SEQUENCE SET", "SEQUENCE OWNED BY", "SEQUENCE", "INDEX",
     "MATERIALIZED VIEW DATA", "MATERIALIZED VIEW", "FK CONSTRAINT", "CONSTRAINT",
     "DEFAULT ACL", "ACL", "COMMENT", "EVENT TRIGGER", "TRIGGER", "EXTENSION", "SCHEMA",
     "FUNCTION", "PROCEDURE", "AGGREGATE", "VIEW", "DOMAIN", "TYPE", "POLICY", "ROW SECURITY",
     "PUBLICATION TABLE", "PUBLICATION", "SUBSCRIPTION", "DEFAULT", "RULE", "LARGE OBJECT",
     "BLOBS", "ENCODING", "STDSTRINGS", "SEARCHPATH", "DATABASE", "COLLATION", "CAST",
     "TEXT SEARCH CONFIGURATION", "TEXT SEARCH DICTIONARY", "FOREIGN TABLE", "SERVER",
     "USER MAPPING", "OPERATOR", "OPERATOR CLASS", "OPERATOR FAMILY", "INDEX ATTACH",
     "TABLE ATTACH", "STATISTICS", "CONVERSION", "PROCEDURAL LANGUAGE", "TRANSFORM",
     "ACCESS METHOD", "FOREIGN DATA WRAPPER", "POLICY"],
    key=len, reverse=True,
)


_DESC_SET = frozenset(_DESCS)
_LONGEST_DESC = max(d.count(" ") + 1 for d in _DESCS)


@dataclass
class Toc:
    header: dict[str, str] = field(default_factory=dict)
    entries: list[TocEntry] = field(default_factory=list)
    # Each entry's dependencies (dump ids), from `pg_restore --list --verbose`.
    deps: dict[int, list[int]] = field(default_factory=dict)

    @property
    def archive_version(self) -> str | None:
        return self.header.get("Dump Version")

    @property
    def dumped_by(self) -> str | None:
        return self.header.get("Dumped by pg_dump version")

    def table_data_oids(self) -> set[int]:
        # No description begins with "TABLE DATA" but TABLE DATA itself: a prefix test, not
        # the description look-up (10 ms against 0.5 on 9,000 entries, on every backup).
        return {e.object_oid for e in self.entries if e.text.startswith("TABLE DATA ")}


def container_of(path: Path) -> str:
    """'custom' for a pg_dump custom-format file, 'zstd' for one wrapped in zstd, 'gpg' or
    'age' for one encrypted (what is inside, the metadata says: `archive.container`)."""
    from tui.core.encryption import looks_encrypted

    with path.open("rb") as f:
        head = f.read(32)
    if head.startswith(CUSTOM_MAGIC):
        return "custom"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    encrypted = looks_encrypted(head)
    if encrypted:
        return encrypted
    if head[:1].isascii() and head[:2] in (b"--", b"\n-", b"SE", b"CR"):
        raise OperationFailed(
            f"{path.name} is a plain SQL dump, not an archive pgrunbook can restore.",
            "Load it with psql, or take a new backup with pgrunbook.",
        )
    raise OperationFailed(
        f"{path.name} is not a PostgreSQL custom-format archive (unknown file header).",
        "Check that the file is a pgrunbook or pg_dump -Fc backup and was copied completely.",
    )


# A listing line: an entry ("123; 1259 16390 TABLE public actor postgres"), the "depends on"
# line under it, or a header line (";     Dump Version: 1.14-0").
_LISTING_RE = re.compile(r"^(?:(\d+);\s+(\d+)\s+(\d+)\s+(.*)|;\s+depends on:\s*(.*)|;(.*))$",
                         re.MULTILINE)


def parse_toc(text: str) -> Toc:
    # One pass of one pattern over the whole listing (9,000 entries in about 10 ms): an entry,
    # its "depends on" line, or a header line; anything else is skipped.
    toc = Toc()
    entries, deps, header = toc.entries, toc.deps, toc.header
    current: list[int] | None = None
    for m in _LISTING_RE.finditer(text):
        dump_id, catalog_oid, object_oid, desc, depends, head = m.groups()
        if dump_id is not None:
            current = deps.setdefault(int(dump_id), [])
            entries.append(TocEntry(int(dump_id), int(catalog_oid), int(object_oid), desc,
                                    m.group(0)))
        elif depends is not None:
            if current is not None:
                current.extend(int(x) for x in depends.split() if x.isdigit())
        else:
            key, sep, value = head.strip().partition(":")
            if sep and key:
                header.setdefault(key.strip(), value.strip())
    return toc


def read_toc(path: Path, pg_restore: Path, env: dict[str, str] | None = None,
             cipher: Cipher | None = None, inner: str = "custom", *,
             depends: bool = True) -> Toc:
    """`pg_restore --list --verbose` of the archive as stored (decrypted with `cipher` and
    decompressed on the fly, in pipes: no plaintext is written): its header, its entries and
    what each depends on. `inner`: the container inside an encrypted file (its metadata's).
    Without `depends` (a backup's read-back), the plain listing: half the lines to parse, and
    `deps` is empty."""
    listing = ["--list", "--verbose"] if depends else ["--list"]
    container = container_of(path)
    if container in ("gpg", "age"):
        if cipher is None:
            from tui.core.encryption import KeyUnavailable

            raise KeyUnavailable(f"{path.name} is encrypted ({container}) and no key was given "
                                 "to read it.", "Restore it with pgrunbook, which picks the "
                                 "key its metadata names.")
        out, err, code = _read_encrypted_toc(path, pg_restore, env, cipher, inner, listing)
    elif container == "custom":
        proc = subprocess.run([str(pg_restore), *listing, str(path)],
                              capture_output=True, check=False, env=env)
        out, err, code = proc.stdout, proc.stderr, proc.returncode
    else:
        zstd = shutil.which("zstd")
        if zstd is None:
            raise OperationFailed(
                f"{path.name} is zstd-compressed and the zstd program is not installed.",
                "Install it: apt install zstd.",
            )
        with subprocess.Popen([zstd, "-dcq", str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL) as unzstd:
            assert unzstd.stdout is not None
            proc = subprocess.run([str(pg_restore), *listing], stdin=unzstd.stdout,
                                  capture_output=True, check=False, env=env)
            unzstd.stdout.close()
            unzstd.kill()
        out, err, code = proc.stdout, proc.stderr, proc.returncode
    if code != 0:
        message = err.decode(errors="replace").strip()
        m = re.search(r"unsupported version \(([\d.]+)\) in file header", message)
        if m:
            raise OperationFailed(
                f"{path.name} was written by a newer pg_dump (archive format {m.group(1)}) "
                f"than {pg_restore} can read.",
                "Use the pg_restore of the PostgreSQL version that made it (see the metadata's "
                "pg_dump_version), or set PG_BIN_DIR.",
                detail=message,
            )
        first = message.splitlines()[0] if message else f"exit code {code}"
        raise OperationFailed(
            f"{path.name} cannot be read as an archive: {first}",
            "The file is damaged or incomplete; use another backup.",
            detail=message,
        )
    return parse_toc(out.decode("utf-8", errors="replace"))


def _read_encrypted_toc(path: Path, pg_restore: Path, env: dict[str, str] | None,
                        cipher: Cipher, inner: str,
                        listing: list[str]) -> tuple[bytes, bytes, int]:
    """decrypt | [zstd -dc |] pg_restore `listing`; a decryption failure (a wrong key,
    a damaged file) is reported as such, not as an unreadable archive."""
    from tui.core.encryption import decrypted_stream

    with decrypted_stream(cipher, path) as dec:
        assert dec.stdout is not None and dec.stderr is not None
        unzstd = None
        source = dec.stdout
        if inner == "zstd":
            unzstd = subprocess.Popen(["zstd", "-dcq"], stdin=dec.stdout, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL)
            assert unzstd.stdout is not None
            source = unzstd.stdout
            dec.stdout.close()  # zstd holds it now
        proc = subprocess.run([str(pg_restore), *listing], stdin=source,
                              capture_output=True, check=False, env=env)
        if unzstd is not None:
            source.close()
            unzstd.kill()
            unzstd.wait()
        if proc.returncode != 0:
            dec.wait()
            why = dec.stderr.read().decode(errors="replace").strip()
            if dec.returncode not in (0, None, -9, -13) and why:
                raise OperationFailed(
                    f"{path.name} could not be decrypted ({cipher.method}): "
                    f"{why.splitlines()[0]}",
                    "The file is damaged, or encrypted with another key; use another backup.",
                    detail=why)
    return proc.stdout, proc.stderr, proc.returncode
