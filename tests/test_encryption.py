"""Encryption at rest (issue 14), end to end with the real parts: pg_dump, zstd, gpg, age
(pyrage), a throwaway PostgreSQL, moto's S3. Nothing plain reaches the backup directory or S3,
the stored file opens with the SOP's manual commands, restores and drills pass, a wrong key is
refused before the target is touched, and the secrets show in no argv, file or output."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pyrage import x25519

from tests.conftest import Server, Workspace, clean_env
from tests.test_s3 import bucket, client, moto_port, s3_env  # noqa: F401 (fixtures)
from tui.core.encryption import AGE_MAGIC, gpg_key_id

PG_BIN = Path("/usr/lib/postgresql/15/bin")
CUSTOM_MAGIC = b"PGDMP"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
PASS_A = "correct horse battery staple: A-7f3c9e1b2d"
PASS_B = "a second passphrase after rotation: B-c4d5e6f7"
# A table of a few hundred thousand rows: the dump takes long enough to watch it being written.
BULK = """CREATE TABLE public.bulk AS
    SELECT g AS id, md5(g::text) AS payload, md5((-g)::text) AS other
    FROM generate_series(1, 300000) AS g"""


# -- helpers -----------------------------------------------------------------------------------

def _secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def _gpg_settings(ws: Workspace, passphrase: str = PASS_A, **extra: str) -> dict[str, str]:
    name = "b" if passphrase == PASS_B else "a"
    key = _secret_file(ws.path / "keys" / f"pass-{name}", passphrase)
    return {"BACKUP_ENCRYPTION": "gpg", "BACKUP_GPG_PASSPHRASE_FILE": str(key), **extra}


def _age_settings(ws: Workspace, identity: x25519.Identity,
                  holder: x25519.Identity | None = None) -> dict[str, str]:
    """Backups to `identity`'s public key; `holder` (default: the same) is the identity this
    host holds for restores."""
    held = holder or identity
    key = _secret_file(ws.path / "keys" / f"age-{str(held.to_public())[-8:]}", str(held))
    return {"BACKUP_ENCRYPTION": "age", "BACKUP_AGE_RECIPIENTS": str(identity.to_public()),
            "BACKUP_AGE_IDENTITY_FILE": str(key)}


def _settings(ws: Workspace, method: str, hold: bool = True) -> tuple[dict[str, str], str]:
    """Settings for `method` and the secret they hold (the passphrase, or the identity);
    `hold=False`: an age backup host's, with the recipient only."""
    if method == "gpg":
        return _gpg_settings(ws), PASS_A
    identity = x25519.Identity.generate()
    settings = _age_settings(ws, identity)
    if not hold:
        del settings["BACKUP_AGE_IDENTITY_FILE"]
    return settings, str(identity)


def _backup(ws: Workspace) -> tuple[dict[str, Any], dict[str, Any]]:
    """A backup through the CLI: its --json answer and its metadata."""
    out = json.loads(ws.run("backup", "--json", check=True).stdout)
    return out, json.loads(Path(out["meta_path"]).read_text())


def _files(root: Path) -> list[Path]:
    return [Path(d) / f for d, _, names in os.walk(root) for f in names
            if (Path(d) / f).is_file()]


def _plain_header(head: bytes) -> bool:
    """Whether `head` is (a beginning of) a custom-format or zstd header."""
    return bool(head) and any(magic.startswith(head[:len(magic)]) or head.startswith(magic)
                              for magic in (CUSTOM_MAGIC, ZSTD_MAGIC))


def _heads(root: Path) -> list[tuple[Path, bytes]]:
    """The first 8 bytes of every regular file under `root`, hidden temp files included."""
    found = []
    for path in _files(root):
        try:
            with path.open("rb") as f:
                found.append((path, f.read(8)))
        except OSError:  # renamed or removed since the listing
            continue
    return found


def _plain_files(root: Path) -> list[tuple[str, bytes]]:
    return [(str(path.relative_to(root)), head) for path, head in _heads(root)
            if _plain_header(head)]


def _cmdlines() -> list[bytes]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    found.append(f.read())
            except OSError:
                continue
    return found


def _argv_watch(needle: bytes, marker: bytes, leaks: list[bytes],
                seen: list[bytes]) -> Callable[[], None]:
    """A watch that keeps every argv holding `needle` in `leaks`, `marker` in `seen`."""
    def watch() -> None:
        for argv in _cmdlines():
            if needle in argv:
                leaks.append(argv)
            if marker in argv:
                seen.append(argv)
    return watch


def _run_watching(ws: Workspace, args: tuple[str, ...],
                  watch: Callable[[], None]) -> tuple[int, str, str]:
    """Run the CLI, calling `watch` over and over until it exits; its output goes to files
    (no pipe to fill while the loop runs)."""
    out_path, err_path = ws.path / f"{args[0]}.out", ws.path / f"{args[0]}.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(ws.cli_argv(*args), cwd=ws.path, env=clean_env(),
                                stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        try:
            while proc.poll() is None:
                watch()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return proc.returncode, out_path.read_text(), err_path.read_text()


def _add_bulk(server: Server, dbname: str) -> None:
    with server.connect(dbname) as conn:
        conn.execute(BULK)


def _starts_encrypted(method: str, head: bytes) -> bool:
    return head.startswith(AGE_MAGIC) if method == "age" else head[:1] == b"\x8c"


# -- 1. no plaintext in the backup directory or S3, at any moment ------------------------------

@pytest.mark.parametrize("method", ["gpg", "age"])
def test_no_plaintext_header_reaches_the_backup_dir_or_s3(
        method: str, workspace: Workspace, server: Server,
        moto_port: int, bucket: str) -> None:  # noqa: F811 (the fixtures)
    _add_bulk(server, workspace.dbname)
    settings, _ = _settings(workspace, method, hold=False)
    s3_env(workspace, bucket, f"http://127.0.0.1:{moto_port}", **settings)
    seen_partial: set[str] = set()
    plain: list[tuple[str, bytes]] = []

    def watch() -> None:
        for path, head in _heads(workspace.backup_dir):
            if path.name.startswith(".") and ".backup.partial-" in path.name and len(head) == 8:
                seen_partial.add(path.name)  # a header written, and read here
            if _plain_header(head):
                plain.append((path.name, head))

    code, out, err = _run_watching(workspace, ("backup", "--json"), watch)
    assert code == 0, err
    assert seen_partial, "the watch never saw the temp file being written"
    assert plain == []
    assert _plain_files(workspace.backup_dir) == []
    result = json.loads(out)
    stored = Path(result["path"])
    assert _starts_encrypted(method, stored.read_bytes()[:32])
    # The off-site copy is the same ciphertext.
    stamp = result["name"][:15]
    body = client(moto_port).get_object(
        Bucket=bucket, Key=f"backups/{stamp}/database.backup")["Body"].read()
    assert _starts_encrypted(method, body[:32]) and not _plain_header(body[:8])
    assert body == stored.read_bytes()


# -- 2. the stored file opens with the SOP's manual commands -----------------------------------

@pytest.mark.parametrize("method", ["gpg", "age"])
def test_the_backup_decrypts_by_hand_as_the_readme_shows(method: str, workspace: Workspace,
                                                         tmp_path: Path) -> None:
    settings, secret = _settings(workspace, method)
    workspace.write_env(**settings)
    out, _ = _backup(workspace)
    stored = Path(out["path"])
    dump = tmp_path / "x.dump"
    pg_restore = PG_BIN / "pg_restore"
    if method == "gpg":
        home = tmp_path / "gnupg"
        home.mkdir(mode=0o700)
        script = (f"gpg --homedir {home} --batch --pinentry-mode loopback --passphrase-file "
                  f"{settings['BACKUP_GPG_PASSPHRASE_FILE']} --decrypt {stored} | zstd -d > "
                  f"{dump} && {pg_restore} -l {dump}")
    else:
        # `age -d -i KEY FILE | zstd -d > x.dump`, the age part through pyrage (no age binary).
        import pyrage

        zst = tmp_path / "x.dump.zst"
        with stored.open("rb") as src, zst.open("wb") as dst:
            pyrage.decrypt_io(src, dst, [x25519.Identity.from_str(secret)])
        script = f"zstd -d < {zst} > {dump} && {pg_restore} -l {dump}"
    proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    data = {" ".join(line.split()[3:7]) for line in proc.stdout.splitlines()
            if " TABLE DATA " in line}
    assert {"TABLE DATA public actor", "TABLE DATA public film",
            "TABLE DATA public rental"} <= data, proc.stdout


# -- 3. restore and drill --------------------------------------------------------------------

@pytest.mark.parametrize("method", ["gpg", "age"])
def test_encrypted_backups_restore_and_drill_with_verification_pass(
        method: str, workspace: Workspace, server: Server) -> None:
    settings, _ = _settings(workspace, method)
    workspace.write_env(**settings)
    _, meta = _backup(workspace)
    with server.connect(workspace.dbname) as conn:
        conn.execute("DELETE FROM public.payment WHERE payment_id % 2 = 0")
    restore = workspace.run("restore", "latest", "--yes")
    assert restore.returncode == 0, restore.stdout + restore.stderr
    assert "VERIFICATION PASS" in restore.stdout
    expected = {(t["schema"], t["name"]): t["rows"] for t in meta["tables"]}
    assert server.counts(workspace.dbname, list(expected)) == expected
    drill = workspace.run("drill", "latest")
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert "PASS" in drill.stdout


# -- 4. a wrong key is refused before the target is touched; rotation ------------------------

def _marker(server: Server, dbname: str) -> None:
    with server.connect(dbname) as conn:
        conn.execute("INSERT INTO public.actor (first_name, last_name) "
                     "VALUES ('AFTER', 'THE-BACKUP')")


def _marker_there(server: Server, dbname: str) -> bool:
    with server.connect(dbname) as conn:
        row = conn.execute("SELECT count(*) FROM public.actor "
                           "WHERE last_name = 'THE-BACKUP'").fetchone()
    assert row is not None
    return bool(row[0] == 1)


def _assert_refused(ws: Workspace, server: Server, needs: str) -> None:
    proc = ws.run("restore", "latest", "--yes")
    assert proc.returncode != 0, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needs in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert _marker_there(server, ws.dbname)
    assert list(ws.backup_dir.glob("*emergency*")) == []


def test_a_wrong_gpg_passphrase_is_refused_and_an_old_one_still_restores(
        workspace: Workspace, server: Server) -> None:
    workspace.write_env(**_gpg_settings(workspace, PASS_A))
    _, old = _backup(workspace)
    key_a = old["archive"]["encryption"]["key_id"]
    assert key_a == gpg_key_id(PASS_A.encode())
    _marker(server, workspace.dbname)
    workspace.write_env(**_gpg_settings(workspace, PASS_B))
    _assert_refused(workspace, server, f"gpg key {key_a}")
    # Rotation: B is current, A is listed among the old passphrases.
    workspace.write_env(**_gpg_settings(
        workspace, PASS_B, BACKUP_GPG_OLD_PASSPHRASE_FILES=str(workspace.path / "keys" / "pass-a")))
    restore = workspace.run("restore", "latest", "--yes")
    assert restore.returncode == 0, restore.stdout + restore.stderr
    assert "VERIFICATION PASS" in restore.stdout and not _marker_there(server, workspace.dbname)
    _, new = _backup(workspace)
    assert new["archive"]["encryption"]["key_id"] == gpg_key_id(PASS_B.encode()) != key_a


def test_an_age_backup_without_its_identity_is_refused(workspace: Workspace,
                                                       server: Server) -> None:
    owner, stranger = x25519.Identity.generate(), x25519.Identity.generate()
    workspace.write_env(**_age_settings(workspace, owner))
    _backup(workspace)
    _marker(server, workspace.dbname)
    recipient = str(owner.to_public())
    short = f"{recipient[:12]}…{recipient[-6:]}"
    workspace.write_env(**_age_settings(workspace, owner, holder=stranger))
    _assert_refused(workspace, server, short)
    no_identity = _age_settings(workspace, owner)
    del no_identity["BACKUP_AGE_IDENTITY_FILE"]
    workspace.write_env(**no_identity)
    _assert_refused(workspace, server, short)


# -- 5. secrets in no argv, file or output -----------------------------------------------------

@pytest.mark.parametrize("method", ["gpg", "age"])
def test_the_secret_is_in_no_argv_file_or_output(method: str, workspace: Workspace,
                                                  server: Server) -> None:
    _add_bulk(server, workspace.dbname)
    settings, secret = _settings(workspace, method)
    workspace.write_env(**settings)
    needle = secret.encode()
    cipher_argv = b"--passphrase-fd" if method == "gpg" else b"tui.core.agepipe"
    outputs = []
    for args in (("backup",), ("restore", "latest", "--yes")):
        leaks: list[bytes] = []
        ciphers: list[bytes] = []
        code, out, err = _run_watching(workspace, args,
                                       _argv_watch(needle, cipher_argv, leaks, ciphers))
        assert code == 0, out + err
        assert leaks == []
        assert ciphers, f"the watch never saw the {method} process of {args[0]}"
        outputs += [out, err]
    assert "VERIFICATION PASS" in outputs[2]
    for text in outputs:
        assert secret not in text
    files = _files(workspace.backup_dir)
    assert any(p.parent.name == "logs" for p in files) and (workspace.backup_dir / "audit.log"
                                                            ).exists()
    assert any("jobs" in p.relative_to(workspace.backup_dir).parts for p in files)
    assert [p for p in files if needle in p.read_bytes()] == []


# -- 6. settings errors: one line and a hint, exit 2 ---------------------------------------------

@pytest.mark.parametrize("case", ["gpg-without-passphrase", "passphrase-file-0644",
                                  "age-bad-recipient", "rot13"])
def test_bad_encryption_settings_are_one_line_and_a_hint(case: str,
                                                         workspace: Workspace) -> None:
    settings, says = {
        "gpg-without-passphrase": ({"BACKUP_ENCRYPTION": "gpg"}, "needs a passphrase"),
        "passphrase-file-0644": ({"BACKUP_ENCRYPTION": "gpg", "BACKUP_GPG_PASSPHRASE_FILE": str(
            _secret_file(workspace.path / "keys" / "open", PASS_A, 0o644))}, "chmod 600"),
        "age-bad-recipient": ({"BACKUP_ENCRYPTION": "age",
                               "BACKUP_AGE_RECIPIENTS": "age1notarealkey"}, "age public key"),
        "rot13": ({"BACKUP_ENCRYPTION": "rot13"}, "BACKUP_ENCRYPTION"),
    }[case]
    workspace.write_env(**settings)
    proc = workspace.run("backup")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.rstrip("\n").splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert errors == [len(lines) - 2] and lines[-1].startswith("  "), proc.stderr
    assert says in proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert PASS_A not in proc.stderr + proc.stdout
    written = [p for p in _files(workspace.backup_dir) if p.name.endswith(
        (".backup", ".meta", ".roles.sql")) or ".partial-" in p.name]
    assert written == []


# -- 7. the metadata -----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["gpg", "age"])
def test_the_metadata_names_the_key_and_hashes_the_stored_file(
        method: str, workspace: Workspace, server: Server) -> None:
    settings, secret = _settings(workspace, method)
    workspace.write_env(**settings)
    out, meta = _backup(workspace)
    enc = meta["archive"]["encryption"]
    if method == "gpg":
        assert enc["method"] == "gpg" and enc["cipher"] == "AES256"
        assert enc["key_id"] == gpg_key_id(PASS_A.encode())
    else:
        assert enc == {"method": "age", "recipients": [settings["BACKUP_AGE_RECIPIENTS"]]}
    assert secret not in Path(out["meta_path"]).read_text()
    stored = Path(out["path"])
    assert _starts_encrypted(method, stored.read_bytes()[:32])
    assert meta["archive"]["sha256"] == hashlib.sha256(stored.read_bytes()).hexdigest()
    assert meta["archive"]["size_bytes"] == stored.stat().st_size
    expected = {(t["schema"], t["name"]): t["rows"] for t in meta["tables"]}
    assert ("public", "actor") in expected and ("public", "rental") in expected
    assert server.counts(workspace.dbname, list(expected)) == expected
