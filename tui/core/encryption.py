"""Backups encrypted before they touch the disk, with keys the operator holds (issue 14).

`BACKUP_ENCRYPTION` is `none` (the default), `gpg` (symmetric AES256, the SOP's
`gpg --symmetric --cipher-algo AES256`) or `age` (to one or more public keys). The cipher is a
process in the backup's pipeline, `pg_dump | zstd | gpg` (or age, through pyrage in a process
of its own), writing into the temp file: no byte of plaintext reaches the backup directory or
S3, and the stored file is what the SOP's manual commands read back
(`gpg --decrypt FILE | zstd -d > x.dump`, or `age -d -i KEY FILE | zstd -d > x.dump`).

Secrets never travel in argv: gpg gets its passphrase through a pipe (`--passphrase-fd`), the
age process its identities the same way. Passphrases and identities come from a file (0600,
checked) or a command (argv, no shell; its standard output). The metadata says how a backup is
encrypted and with which key, nothing secret: the age recipients (public keys), or for gpg a
key id, an scrypt hash of the passphrase (a fixed salt, so one passphrase has one id, costly to
guess from: the ciphertext itself lets anyone test a passphrase as fast). Restoring picks the
key by that id among the current passphrase and the old ones (`BACKUP_GPG_OLD_PASSPHRASE_FILES`,
for backups taken before a rotation), or the identities whose public keys are recipients.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tui.core.errors import ConfigError, OperationFailed
from tui.core.settings import Settings

METHODS = ("none", "gpg", "age")
GPG_CIPHER = "AES256"
AGE_MAGIC = b"age-encryption.org/v1"
# An OpenPGP message starts with a packet header: a symmetric-key session key (tag 3, old or
# new format) or a public-key one (tag 1); gpg --symmetric writes 0x8c 0x0d.
GPG_FIRST_BYTES = (0x8C, 0xC3, 0x84, 0x85, 0xC1)
_KEY_ID_SALT = b"pgrunbook gpg key id v1"
# The gpg options of every call: no agent (an explicit S2K count, so gpg does not ask one for a
# calibrated count), no passphrase cache, no keyring but a throwaway home, no compression (the
# archive is zstd already; gpg's would cost 10x the time).
_GPG_BASE = ("--batch", "--no-tty", "--quiet", "--no-symkey-cache", "--pinentry-mode",
             "loopback", "--no-permission-warning")
_GPG_ENCRYPT = ("--symmetric", "--cipher-algo", GPG_CIPHER, "--compress-algo", "none",
                "--s2k-mode", "3", "--s2k-digest-algo", "SHA512", "--s2k-count", "65011712")


class KeyUnavailable(OperationFailed):
    """The key a backup needs is not on this host (or is not the one configured)."""


@dataclass(frozen=True)
class KeyMaterial:
    """A passphrase or identities as bytes, kept out of repr, argv and pickles."""

    value: bytes = field(repr=False)
    source: str  # where it came from, for messages: "BACKUP_GPG_PASSPHRASE_FILE=/etc/..."
    path: Path | None = None  # the file it was read from, if any

    def __reduce__(self) -> Any:
        raise TypeError("an encryption secret is never pickled")


@dataclass(frozen=True)
class Cipher:
    """How a backup is (to be) encrypted, and what is needed to run the cipher process."""

    method: str  # gpg or age
    key_id: str  # gpg: the passphrase's id; age: the recipients, comma-separated
    recipients: tuple[str, ...] = ()  # age
    secret: KeyMaterial | None = None  # gpg's passphrase (encrypt and decrypt); age's identities
    # age, backing up: a recipient made for this backup alone, whose identity (`secret`) lets
    # the backup read its own table of contents back without the operator's identity on the
    # host; it is forgotten with the process and named nowhere.
    read_back: str | None = None

    def describe(self) -> str:
        if self.method == "gpg":
            return f"gpg {GPG_CIPHER}, key {self.key_id}"
        n = len(self.recipients)
        return f"age, {n} recipient{'' if n == 1 else 's'} ({_short(self.recipients[0])})"

    def meta(self) -> dict[str, Any]:
        """What the metadata says (nothing secret)."""
        if self.method == "gpg":
            return {"method": "gpg", "cipher": GPG_CIPHER, "key_id": self.key_id,
                    "key_id_kdf": "scrypt n=16384 r=8 p=1"}
        return {"method": "age", "recipients": list(self.recipients)}


def _short(recipient: str) -> str:
    return f"{recipient[:12]}…{recipient[-6:]}" if len(recipient) > 24 else recipient


def method_of(settings: Settings) -> str:
    raw = (settings.values.get("BACKUP_ENCRYPTION") or "none").strip().lower()
    if raw not in METHODS:
        raise ConfigError(f"BACKUP_ENCRYPTION={raw!r} is not one of {', '.join(METHODS)}.",
                          "Set BACKUP_ENCRYPTION to none, gpg or age (see "
                          ".env.deployment.example).")
    return raw


def key_id_of(secret: KeyMaterial) -> str:
    """The gpg key id of a passphrase; for one read from a file, remembered while the file is
    the same (tui.core.toolcache: its path, size, times and inode), so that a restore or a
    health check does not spend the scrypt hash's 40 ms on every command. The id is not
    secret; the passphrase is never cached."""
    if secret.path is None:
        return gpg_key_id(secret.value)
    from tui.core.toolcache import remembered

    return str(remembered("gpg-key-id", secret.path, lambda: gpg_key_id(secret.value)))


def gpg_key_id(passphrase: bytes) -> str:
    """The id of a gpg passphrase: 16 hex digits of its scrypt hash (about 40 ms)."""
    return hashlib.scrypt(passphrase, salt=_KEY_ID_SALT, n=16384, r=8, p=1,
                          dklen=8).hex()


# -- reading secrets ---------------------------------------------------------------------------

def _read_private_file(name: str, path: Path) -> bytes:
    try:
        st = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{name}={path} does not exist.",
                          f"Create it (chmod 600) or correct {name}.") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {name}={path}: {exc.strerror}.",
                          "Check its owner and mode.") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{name}={path} is readable by other users (mode "
                          f"{stat.S_IMODE(st.st_mode):o}).", f"Run `chmod 600 {path}`.")
    return data


def _run_secret_command(name: str, command: str) -> bytes:
    argv = shlex.split(command)
    if not argv:
        raise ConfigError(f"{name} is empty.", f"Set {name} to a command, or unset it.")
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=60, check=False,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"{name} could not run ({argv[0]}): {exc.__class__.__name__}.",
                          f"Check {name}.") from None
    if proc.returncode != 0:
        # Its stderr may hold anything: only its first line, which should say why.
        why = (proc.stderr.decode(errors="replace").strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"{name} ({argv[0]}) failed with exit {proc.returncode}"
                          f"{': ' + why if why else ''}.", f"Check {name}.")
    return proc.stdout


def _passphrase(data: bytes, source: str, path: Path | None = None) -> KeyMaterial:
    line = data.splitlines()[0] if data.strip() else b""
    if not line.strip():
        raise ConfigError(f"the passphrase from {source} is empty.",
                          "Write the passphrase on its first line.")
    return KeyMaterial(line, source, path)


def _file_or_command(settings: Settings, prefix: str) -> tuple[bytes, str, Path | None] | None:
    """The bytes of `<prefix>_FILE` (0600, checked) or the output of `<prefix>_COMMAND`, where
    they came from, and the file; None when neither is set."""
    v = settings.values
    if v.get(f"{prefix}_FILE"):
        path = Path(v[f"{prefix}_FILE"]).expanduser()
        return _read_private_file(f"{prefix}_FILE", path), f"{prefix}_FILE={path}", path
    if v.get(f"{prefix}_COMMAND"):
        return (_run_secret_command(f"{prefix}_COMMAND", v[f"{prefix}_COMMAND"]),
                f"{prefix}_COMMAND", None)
    return None


def _current_passphrase(settings: Settings) -> KeyMaterial | None:
    found = _file_or_command(settings, "BACKUP_GPG_PASSPHRASE")
    return None if found is None else _passphrase(*found)


def _old_passphrases(settings: Settings) -> list[KeyMaterial]:
    raw = settings.values.get("BACKUP_GPG_OLD_PASSPHRASE_FILES") or ""
    found = []
    for part in (p.strip() for p in raw.split(",")):
        if part:
            path = Path(part).expanduser()
            found.append(_passphrase(_read_private_file("BACKUP_GPG_OLD_PASSPHRASE_FILES", path),
                                     f"BACKUP_GPG_OLD_PASSPHRASE_FILES={path}", path))
    return found


def _recipients(settings: Settings) -> tuple[str, ...]:
    v = settings.values
    found = [r for r in (v.get("BACKUP_AGE_RECIPIENTS") or "").replace(",", " ").split() if r]
    if v.get("BACKUP_AGE_RECIPIENTS_FILE"):
        path = Path(v["BACKUP_AGE_RECIPIENTS_FILE"]).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read BACKUP_AGE_RECIPIENTS_FILE={path}: "
                              f"{exc.strerror}.", "Check the path.") from None
        found += [line.strip() for line in text.splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
    from pyrage import x25519

    for r in found:
        try:
            x25519.Recipient.from_str(r)
        except Exception:
            raise ConfigError(f"{_short(r)} is not an age public key (age1...).",
                              "List the recipients' public keys (age-keygen -y KEYFILE prints "
                              "one) in BACKUP_AGE_RECIPIENTS or BACKUP_AGE_RECIPIENTS_FILE."
                              ) from None
    return tuple(dict.fromkeys(found))


def _identities(settings: Settings) -> KeyMaterial | None:
    found = _file_or_command(settings, "BACKUP_AGE_IDENTITY")
    return None if found is None else KeyMaterial(*found)


def identity_lines(secret: KeyMaterial) -> list[str]:
    return [line.strip() for line in secret.value.decode(errors="replace").splitlines()
            if line.strip().startswith("AGE-SECRET-KEY-")]


def _public_of(identity_line: str) -> str | None:
    from pyrage import x25519

    try:
        return str(x25519.Identity.from_str(identity_line).to_public())
    except Exception:  # not an identity pyrage reads: it decrypts nothing
        return None


def public_keys(secret: KeyMaterial) -> set[str]:
    """The public keys (recipients) of the identities in `secret`."""
    return {key for line in identity_lines(secret) if (key := _public_of(line)) is not None}


# -- choosing the cipher -----------------------------------------------------------------------

def for_backup(settings: Settings) -> Cipher | None:
    """The cipher a new backup is written with, or None (BACKUP_ENCRYPTION=none). Reads the
    passphrase now: a backup that cannot be encrypted fails before pg_dump starts."""
    method = method_of(settings)
    if method == "none":
        return None
    if method == "gpg":
        if shutil.which("gpg") is None:
            raise ConfigError("BACKUP_ENCRYPTION=gpg, but gpg is not installed.",
                              "Install it: apt install gnupg.")
        secret = _current_passphrase(settings)
        if secret is None:
            raise ConfigError("BACKUP_ENCRYPTION=gpg needs a passphrase.",
                              "Set BACKUP_GPG_PASSPHRASE_FILE (a 0600 file) or "
                              "BACKUP_GPG_PASSPHRASE_COMMAND.")
        return Cipher("gpg", key_id_of(secret), secret=secret)
    recipients = _recipients(settings)
    if not recipients:
        raise ConfigError("BACKUP_ENCRYPTION=age needs at least one recipient.",
                          "Set BACKUP_AGE_RECIPIENTS (age1... public keys) or "
                          "BACKUP_AGE_RECIPIENTS_FILE.")
    from pyrage import x25519

    once = x25519.Identity.generate()
    return Cipher("age", ",".join(recipients), recipients=recipients,
                  secret=KeyMaterial(str(once).encode(), "a key made for this backup's check"),
                  read_back=str(once.to_public()))


def encryption_of(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """The metadata's account of how a backup is encrypted, or None for a plain one."""
    enc = ((meta or {}).get("archive") or {}).get("encryption")
    return enc if isinstance(enc, dict) and enc.get("method") in ("gpg", "age") else None


def needed_key(meta: dict[str, Any] | None) -> str | None:
    """The key a backup needs, as the inventory shows it: "gpg 3f2a9c1e7b0d4a55",
    "age age1qyqszqgp…x7k2fa", or None for a plain backup."""
    enc = encryption_of(meta)
    if enc is None:
        return None
    if enc["method"] == "gpg":
        return f"gpg {enc.get('key_id')}"
    recipients = enc.get("recipients") or ["?"]
    more = f" (+{len(recipients) - 1})" if len(recipients) > 1 else ""
    return f"age {_short(str(recipients[0]))}{more}"


def for_restore(settings: Settings, name: str, meta: dict[str, Any] | None) -> Cipher | None:
    """The cipher that decrypts backup `name` on this host, or None for a plain backup.
    Raises KeyUnavailable, in one line naming the key the backup needs, when it is not here:
    before anything reads the archive or touches a target."""
    enc = encryption_of(meta)
    if enc is None:
        return None
    if enc["method"] == "gpg":
        want = str(enc.get("key_id"))
        current = _current_passphrase(settings)
        candidates = ([current] if current else []) + _old_passphrases(settings)
        for secret in candidates:
            if key_id_of(secret) == want:
                return Cipher("gpg", want, secret=secret)
        have = ", ".join(f"{s.source} is key {key_id_of(s)}" for s in candidates)
        raise KeyUnavailable(
            f"backup {name} is encrypted with gpg key {want}, which is not on this host"
            f"{' (' + have + ')' if have else ''}.",
            "Set BACKUP_GPG_PASSPHRASE_FILE to that passphrase's file, or list it in "
            "BACKUP_GPG_OLD_PASSPHRASE_FILES after a rotation. Nothing was changed.")
    recipients = tuple(str(r) for r in enc.get("recipients") or ())
    identities = _identities(settings)
    mine = public_keys(identities) & set(recipients) if identities is not None else set()
    if identities is not None and mine:
        # Only the identities this backup was encrypted to go to the age process.
        wanted = [line for line in identity_lines(identities)
                  if _public_of(line) in mine]
        return Cipher("age", ",".join(recipients), recipients=recipients,
                      secret=KeyMaterial("\n".join(wanted).encode(), identities.source))
    where = identities.source if identities else "no BACKUP_AGE_IDENTITY_FILE is set"
    raise KeyUnavailable(
        f"backup {name} is encrypted with age to {', '.join(_short(r) for r in recipients)}, "
        f"and no identity for {'it' if len(recipients) == 1 else 'them'} is on this host "
        f"({where}).",
        "Set BACKUP_AGE_IDENTITY_FILE to a file holding the AGE-SECRET-KEY of one of those "
        "recipients. Nothing was changed.")


def available_keys(settings: Settings) -> set[str]:
    """The keys this host can decrypt with, as `needed_key` names them ("gpg <id>",
    "age <recipient>" in full): each passphrase hashed once (health checks many backups)."""
    found: set[str] = set()
    current = _current_passphrase(settings)
    for secret in ([current] if current else []) + _old_passphrases(settings):
        found.add(f"gpg {key_id_of(secret)}")
    identities = _identities(settings)
    if identities is not None:
        found.update(f"age {key}" for key in public_keys(identities))
    return found


def decryptable(meta: dict[str, Any] | None, keys: set[str]) -> bool:
    """Whether one of `keys` (from `available_keys`) decrypts the backup of `meta`."""
    enc = encryption_of(meta)
    if enc is None:
        return True
    if enc["method"] == "gpg":
        return f"gpg {enc.get('key_id')}" in keys
    return any(f"age {r}" in keys for r in enc.get("recipients") or ())


# -- the cipher process ------------------------------------------------------------------------

@dataclass
class Step:
    """A cipher process to start: its argv, and the read end of the pipe holding its secret
    (named in argv by number, handed to the child through `pass_fds`). `close` closes the
    parent's copy once the child runs; `cleanup` also removes gpg's throwaway home."""

    argv: list[str]
    home: Path | None = None
    _read_fd: int | None = None

    def pass_fds(self) -> tuple[int, ...]:
        return () if self._read_fd is None else (self._read_fd,)

    def close(self) -> None:
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None

    def cleanup(self) -> None:
        self.close()
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None


def _secret_pipe(secret: bytes) -> int:
    """A pipe holding `secret` (and then end of file): the read end, for the child."""
    r, w = os.pipe()
    try:
        os.write(w, secret + b"\n")  # far below the pipe's 64 KiB: no deadlock
    finally:
        os.close(w)
    return r


def _gpg_home() -> Path:
    return Path(tempfile.mkdtemp(prefix="pgrunbook-gpg-"))


def encrypt_step(cipher: Cipher) -> Step:
    if cipher.method == "gpg":
        assert cipher.secret is not None
        fd = _secret_pipe(cipher.secret.value)
        home = _gpg_home()
        return Step(["gpg", "--homedir", str(home), *_GPG_BASE, *_GPG_ENCRYPT,
                     "--passphrase-fd", str(fd), "--output", "-"], home, fd)
    extra = (cipher.read_back,) if cipher.read_back else ()
    return Step([sys.executable, "-m", "tui.core.agepipe", "encrypt", *cipher.recipients,
                 *extra])


def decrypt_step(cipher: Cipher) -> Step:
    assert cipher.secret is not None
    fd = _secret_pipe(cipher.secret.value)
    if cipher.method == "gpg":
        home = _gpg_home()
        return Step(["gpg", "--homedir", str(home), *_GPG_BASE, "--decrypt",
                     "--passphrase-fd", str(fd), "--output", "-"], home, fd)
    return Step([sys.executable, "-m", "tui.core.agepipe", "decrypt", "--identities-fd",
                 str(fd)], None, fd)


@contextlib.contextmanager
def decrypted_stream(cipher: Cipher, path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process writing the plaintext of `path` to its stdout (a pipe), for readers that
    take a stream (the table of contents). Its stderr is a pipe the caller may read."""
    step = decrypt_step(cipher)
    try:
        with path.open("rb") as src:
            proc = subprocess.Popen(step.argv, stdin=src, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, pass_fds=step.pass_fds())
        step.close()
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
    finally:
        step.cleanup()


def looks_encrypted(head: bytes) -> str | None:
    """'age' or 'gpg' for a file that starts like one, else None."""
    if head.startswith(AGE_MAGIC):
        return "age"
    if head[:1] and head[0] in GPG_FIRST_BYTES:
        return "gpg"
    return None
