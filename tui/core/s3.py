"""Off-site copies in S3, in the SOP's layout: `<prefix><YYYYMMDD_HHMMSS>/database.backup` and
`<prefix><YYYYMMDD_HHMMSS>/metadata.json`, the metadata uploaded last as the mark that the backup
is complete.

The upload follows the archive while pg_dump is still writing it (multipart, parts uploaded as
soon as they are on disk, part size growing so the 10,000-part limit is never reached), with
retries; a failed upload aborts its multipart upload and leaves the local backup intact.
Downloads use parallel ranged GETs into a local regular file, each range retried on its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tui.core.errors import ConfigError, OperationFailed, PgRunbookError
from tui.core.events import Emit, PhaseStarted
from tui.core.settings import Settings

MiB = 1 << 20
BASE_PART = 8 * MiB
# S3 checks each part against this on arrival (transport errors). CRC32 costs a third of SHA-256
# on both ends; the archive's SHA-256 travels in its tag and metadata.json and is checked on
# every download.
PART_CHECKSUM = "CRC32"
PARTS_PER_STEP = 1000  # part size doubles every 1000 parts: 10,000 parts hold ~8 TB
CONCURRENCY = 4
RANGE_SIZE = 16 * MiB
RETRIES = 6
ARCHIVE_KEY = "database.backup"
META_KEY = "metadata.json"
ROLES_KEY = "roles.sql"  # pg_dumpall --roles-only --no-role-passwords, beside the archive
SSE_CHOICES = ("AES256", "aws:kms", "none")


def part_size(part_number: int) -> int:
    return BASE_PART << ((part_number - 1) // PARTS_PER_STEP)


@dataclass(frozen=True)
class S3Config:
    bucket: str
    prefix: str
    endpoint_url: str | None
    region: str | None
    sse: str
    kms_key_id: str | None
    storage_class: str | None
    credentials: dict[str, str] = field(default_factory=dict, repr=False)
    profile: str | None = None
    timeout: int = 60

    def key_for(self, stamp: str, leaf: str) -> str:
        return f"{self.prefix}{stamp}/{leaf}"

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(profile_name=self.profile, **self.credentials)
        return session.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            config=Config(retries={"mode": "standard", "max_attempts": RETRIES},
                          connect_timeout=min(10, self.timeout), read_timeout=self.timeout,
                          max_pool_connections=CONCURRENCY * 4),
        )

    def client_soon(self) -> Future[Any]:
        """A client made in a background thread: importing boto3 and loading the S3 model take
        about 0.2 CPU-seconds, better spent before the dump than during it."""
        future: Future[Any] = Future()

        def make() -> None:
            try:
                future.set_result(self.client())
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
                future.set_exception(exc)

        threading.Thread(target=make, name="s3-client", daemon=True).start()
        return future

    def extra_put_args(self) -> dict[str, str]:
        args: dict[str, str] = {}
        if self.sse != "none":
            args["ServerSideEncryption"] = self.sse
        if self.sse == "aws:kms" and self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        if self.storage_class:
            args["StorageClass"] = self.storage_class
        return args


def s3_config(settings: Settings) -> S3Config | None:
    """None when BACKUP_S3_BUCKET is unset: everything then works locally."""
    v = settings.values
    bucket = (v.get("BACKUP_S3_BUCKET") or "").strip()
    if not bucket:
        return None
    if "/" in bucket or not 3 <= len(bucket) <= 63:
        raise ConfigError(f"BACKUP_S3_BUCKET {bucket!r} is not a bucket name.",
                          "Give the bucket's name only, such as joot-supabase-backups.")
    prefix = v.get("BACKUP_S3_PREFIX", "backups/").lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    sse = v.get("BACKUP_S3_SSE", "AES256").strip() or "AES256"
    if sse not in SSE_CHOICES:
        raise ConfigError(f"BACKUP_S3_SSE {sse!r} is not known.",
                          "Use AES256 (default), aws:kms (with BACKUP_S3_KMS_KEY_ID) or none.")
    endpoint = (v.get("AWS_ENDPOINT_URL") or "").strip() or None
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"AWS_ENDPOINT_URL {endpoint!r} is not an http(s) URL.")
    raw_timeout = v.get("BACKUP_S3_TIMEOUT", "60")
    try:
        timeout = int(raw_timeout)
        if timeout <= 0:
            raise ValueError
    except ValueError:
        raise ConfigError(f"BACKUP_S3_TIMEOUT must be a whole number of seconds, "
                          f"not {raw_timeout!r}.") from None
    creds = {}
    if v.get("AWS_ACCESS_KEY_ID"):
        creds["aws_access_key_id"] = v["AWS_ACCESS_KEY_ID"]
        creds["aws_secret_access_key"] = v.get("AWS_SECRET_ACCESS_KEY", "")
        if v.get("AWS_SESSION_TOKEN"):
            creds["aws_session_token"] = v["AWS_SESSION_TOKEN"]
    return S3Config(
        bucket=bucket, prefix=prefix, endpoint_url=endpoint,
        region=(v.get("AWS_REGION") or v.get("AWS_DEFAULT_REGION") or None),
        sse=sse, kms_key_id=v.get("BACKUP_S3_KMS_KEY_ID") or None,
        storage_class=v.get("BACKUP_S3_STORAGE_CLASS") or None,
        credentials=creds, profile=v.get("AWS_PROFILE") or None, timeout=timeout,
    )


def describe_error(exc: BaseException) -> str:
    """One plain phrase for an S3 failure (never credentials)."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return "no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)"
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{err.get('Code', 'error')} (HTTP {status}): {err.get('Message', '')}".strip()
    if isinstance(exc, BotoCoreError):
        return str(exc)
    return f"{exc.__class__.__name__}: {exc}"


# -- upload --------------------------------------------------------------------------------


class StreamUpload:
    """Uploads a file while another process is still writing it.

    `start()` opens the file and begins; parts go up as soon as they are on disk. `finish()`
    (after the writer is done) uploads the rest, completes the upload, tags the object and puts
    metadata.json last. `abort()` aborts the multipart upload. Progress goes to `on_progress`.

    Every object gets the tag `pgrunbook-retention=<class>` (tui.core.lifecycle), the class
    decided from the earlier backups of its month and week, listed in a thread of their own
    from `start()` on. `meta`, when the metadata is known before the upload (`upload`), tags
    the archive from its creation; otherwise the archive gets it with its other tags.
    """

    def __init__(self, config: S3Config, stamp: str, path: Path,
                 on_progress: Callable[[int], None] | None = None,
                 client: Future[Any] | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        self.config = config
        self._client_future = client
        self.stamp = stamp
        self._known_meta = meta
        self._existing: Future[Any] | None = None
        self.key = config.key_for(stamp, ARCHIVE_KEY)
        self.meta_key = config.key_for(stamp, META_KEY)
        self.roles_key = config.key_for(stamp, ROLES_KEY)
        self.path = path
        self.on_progress = on_progress or (lambda _n: None)
        self._done_writing = threading.Event()
        self._final_size = 0
        self._aborted = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._stored = False  # the archive object exists (its metadata.json may not yet)
        self._client: Any = None
        self.uploaded = 0

    def start(self) -> None:
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        if self._client_future is None:
            self._client_future = self.config.client_soon()
        self._existing = Future()
        threading.Thread(target=self._look_around, name="s3-neighbours", daemon=True).start()
        self._thread = threading.Thread(target=self._run, name="s3-upload", daemon=True)
        self._thread.start()

    def _look_around(self) -> None:
        """The earlier backups of this one's month and ISO week, which decide its retention
        class: one listing beside the upload, needed only when it finishes (tui.core.lifecycle
        is imported here too, off the backup's main thread)."""
        assert self._existing is not None and self._client_future is not None
        try:
            from tui.core.lifecycle import existing_near

            self._existing.set_result(existing_near(self._client_future.result(), self.config,
                                                    self.stamp))
        except BaseException as exc:  # noqa: BLE001 - the class falls back (class_at_upload)
            self._existing.set_exception(exc)

    def _wait_for(self, end: int) -> bool:
        """Block until the file holds `end` bytes or the writer is done; False if aborted."""
        while not self._aborted.is_set():
            if self._done_writing.is_set() or os.fstat(self._fd).st_size >= end:
                return True
            time.sleep(0.05)
        return False

    def _run(self) -> None:
        try:
            self._client = (self._client_future.result() if self._client_future is not None
                            else self.config.client())
            offset, number = 0, 1
            futures: list[Future[dict[str, Any]]] = []
            with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
                while True:
                    size = part_size(number)
                    if not self._wait_for(offset + size):
                        return
                    available = (self._final_size if self._done_writing.is_set()
                                 else os.fstat(self._fd).st_size)
                    if available - offset >= size or (self._done_writing.is_set()
                                                      and available > offset):
                        length = min(size, available - offset)
                        if number == 1 and self._done_writing.is_set() and length == available:
                            self._single_put(length)
                            return
                        if self._upload_id is None:
                            self._create()
                        futures.append(pool.submit(self._part, number, offset, length))
                        offset += length
                        number += 1
                        # Bound the data in flight (memory stays flat).
                        while sum(not f.done() for f in futures) >= CONCURRENCY * 2:
                            wait(futures, return_when=FIRST_EXCEPTION, timeout=0.5)
                        for f in futures:
                            if f.done() and f.exception() is not None:
                                raise f.exception()  # type: ignore[misc]
                    elif self._done_writing.is_set():
                        break
                for f in futures:
                    self._parts.append(f.result())
            if self._upload_id is not None:
                self._parts.sort(key=lambda p: p["PartNumber"])
                self._client.complete_multipart_upload(
                    Bucket=self.config.bucket, Key=self.key, UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts})
                self._upload_id = None
                self._stored = True
            elif offset == 0:
                self._single_put(0)
        except BaseException as exc:  # reported by finish()
            self._error = exc

    def _retention(self, meta: dict[str, Any]) -> str:
        from tui.core.lifecycle import class_at_upload

        return class_at_upload({"name": self.stamp, **meta}, self._existing)

    def _early_tagging(self) -> dict[str, str]:
        """The archive's Tagging argument, when its metadata is known before the upload."""
        if self._known_meta is None:
            return {}
        from tui.core.lifecycle import tagging

        return {"Tagging": tagging(self._retention(self._known_meta))}

    def _create(self) -> None:
        resp = self._client.create_multipart_upload(
            Bucket=self.config.bucket, Key=self.key, ChecksumAlgorithm=PART_CHECKSUM,
            **self.config.extra_put_args(), **self._early_tagging())
        self._upload_id = resp["UploadId"]

    def _read(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def _part(self, number: int, offset: int, length: int) -> dict[str, Any]:
        body = self._read(offset, length)
        resp = self._client.upload_part(
            Bucket=self.config.bucket, Key=self.key, UploadId=self._upload_id,
            PartNumber=number, Body=body, ChecksumAlgorithm=PART_CHECKSUM)
        self.uploaded += length
        self.on_progress(self.uploaded)
        return {"PartNumber": number, "ETag": resp["ETag"],
                f"Checksum{PART_CHECKSUM}": resp.get(f"Checksum{PART_CHECKSUM}")}

    def _single_put(self, length: int) -> None:
        self._client.put_object(Bucket=self.config.bucket, Key=self.key,
                                Body=self._read(0, length), ChecksumAlgorithm=PART_CHECKSUM,
                                **self.config.extra_put_args(), **self._early_tagging())
        self._stored = True
        self.uploaded = length
        self.on_progress(length)

    def writer_done(self, final_size: int) -> None:
        """The file is whole: the last part goes up and the upload completes while the backup
        checks its archive; `finish()` then only tags it and puts metadata.json."""
        self._final_size = final_size
        self._done_writing.set()

    def finish(self, final_size: int, sha256: str, kind: str, meta: dict[str, Any],
               roles_sql: bytes | None = None) -> str:
        """The writer is done: upload the rest, tag, put roles.sql (when there is one) and
        metadata.json last, all three tagged with the backup's retention class. Returns the
        key."""
        from tui.core.lifecycle import TAG_KEY, tagging

        self.writer_done(final_size)
        assert self._thread is not None
        self._thread.join()
        try:
            if self._error is not None:
                raise self._error
            retention = self._retention({"kind": kind, **meta})
            self._client.put_object_tagging(
                Bucket=self.config.bucket, Key=self.key,
                Tagging={"TagSet": [{"Key": "kind", "Value": kind},
                                    {"Key": "sha256", "Value": sha256},
                                    {"Key": TAG_KEY, "Value": retention}]})
            if roles_sql is not None:
                self._client.put_object(Bucket=self.config.bucket,
                                        Key=self.roles_key,
                                        Body=roles_sql, ContentType="application/sql",
                                        Tagging=tagging(retention),
                                        **self.config.extra_put_args())
            body = json.dumps(meta, indent=2, ensure_ascii=False).encode()
            self._client.put_object(Bucket=self.config.bucket, Key=self.meta_key, Body=body,
                                    ContentType="application/json", Tagging=tagging(retention),
                                    **self.config.extra_put_args())
        except BaseException as exc:
            self._abort_multipart()
            raise OperationFailed(describe_error(exc)) from None
        finally:
            os.close(self._fd)
        return self.key

    def _abort_multipart(self) -> None:
        if self._upload_id is not None and self._client is not None:
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(Bucket=self.config.bucket, Key=self.key,
                                                    UploadId=self._upload_id)
            self._upload_id = None

    def abort(self) -> None:
        """Stop, abort the multipart upload, and remove the object if it was already whole
        (the upload can complete before the backup's last checks fail): no archive is left in
        the bucket without its metadata.json."""
        self._aborted.set()
        self._done_writing.set()
        if self._thread is not None:
            self._thread.join()
        self._abort_multipart()
        if self._stored and self._client is not None:
            with contextlib.suppress(Exception):
                self._client.delete_object(Bucket=self.config.bucket, Key=self.key)
            self._stored = False
        with contextlib.suppress(OSError):
            os.close(self._fd)


def upload_existing(config: S3Config, archive: Path, meta: dict[str, Any],
                    on_progress: Callable[[int], None] | None = None) -> str:
    """`pgrunbook upload`: ship a finished local backup."""
    stamp = str(meta["name"])[:15]
    from tui.core.roles import roles_path_for

    roles = roles_path_for(archive)
    up = StreamUpload(config, stamp, archive, on_progress, meta=meta)
    up.start()
    return up.finish(archive.stat().st_size, str(meta["archive"]["sha256"]), str(meta["kind"]),
                     meta, roles.read_bytes() if roles.exists() else None)


# -- inventory -----------------------------------------------------------------------------


@dataclass
class S3Backup:
    stamp: str
    archive_key: str | None = None
    size_bytes: int | None = None
    meta: dict[str, Any] | None = None
    meta_error: str | None = None
    last_modified: datetime | None = None


@dataclass
class S3Inventory:
    backups: dict[str, S3Backup]
    orphaned_uploads: list[dict[str, Any]]


def list_s3(config: S3Config, workers: int = 16, cache_path: Path | None = None) -> S3Inventory:
    """Every backup under the prefix (paged through), with its metadata.json. Metadata already
    fetched is reused from `cache_path` while the object's ETag is unchanged, so listing a
    bucket with thousands of backups costs one GET per new backup, not one per backup."""
    client = config.client()
    found: dict[str, S3Backup] = {}
    metas: dict[str, str] = {}
    etags: dict[str, str] = {}
    cache: dict[str, Any] = {}
    if cache_path is not None:
        with contextlib.suppress(OSError, ValueError):
            cache = json.loads(cache_path.read_text())
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=config.bucket, Prefix=config.prefix):
        for obj in page.get("Contents", []):
            rest = obj["Key"][len(config.prefix):]
            stamp, _, leaf = rest.partition("/")
            if not leaf:
                continue
            entry = found.setdefault(stamp, S3Backup(stamp))
            if leaf == ARCHIVE_KEY:
                entry.archive_key = obj["Key"]
                entry.size_bytes = int(obj["Size"])
                entry.last_modified = obj["LastModified"]
            elif leaf == META_KEY:
                metas[stamp] = obj["Key"]
                etags[obj["Key"]] = str(obj.get("ETag"))

    def fetch(item: tuple[str, str]) -> tuple[str, dict[str, Any] | None, str | None]:
        stamp, key = item
        try:
            body = client.get_object(Bucket=config.bucket, Key=key)["Body"].read()
            return stamp, json.loads(body), None
        except Exception as exc:
            return stamp, None, f"metadata.json unreadable ({describe_error(exc)})"

    todo = {}
    for stamp, key in metas.items():
        hit = cache.get(key)
        if isinstance(hit, dict) and hit.get("etag") == etags[key] and hit.get("meta"):
            found[stamp].meta = hit["meta"]
        else:
            todo[stamp] = key
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for stamp, meta, error in pool.map(fetch, todo.items()):
            found[stamp].meta = meta
            found[stamp].meta_error = error
    if cache_path is not None:
        fresh = {key: {"etag": etags[key], "meta": found[stamp].meta}
                 for stamp, key in metas.items() if found[stamp].meta is not None}
        if fresh != cache:
            from tui.core.fsutil import atomic_write_bytes

            with contextlib.suppress(OSError):
                atomic_write_bytes(cache_path, json.dumps(fresh).encode())
    orphaned = []
    cutoff = datetime.now(UTC) - timedelta(days=1)
    for page in client.get_paginator("list_multipart_uploads").paginate(
            Bucket=config.bucket, Prefix=config.prefix):
        for up in page.get("Uploads", []):
            if up["Initiated"] < cutoff:
                orphaned.append({"key": up["Key"], "upload_id": up["UploadId"],
                                 "initiated": up["Initiated"].isoformat()})
    return S3Inventory(found, orphaned)


# -- download ------------------------------------------------------------------------------


def download(config: S3Config, key: str, dest: Path,
             on_progress: Callable[[int, int], None] | None = None) -> int:
    """Parallel ranged GETs into `dest` (a new private file); each range retried on its own."""
    client = config.client()
    size = int(client.head_object(Bucket=config.bucket, Key=key)["ContentLength"])
    fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    done = 0
    lock = threading.Lock()

    def fetch(start: int) -> None:
        nonlocal done
        end = min(start + RANGE_SIZE, size) - 1
        pos = start
        for attempt in range(RETRIES):
            try:
                resp = client.get_object(Bucket=config.bucket, Key=key,
                                         Range=f"bytes={pos}-{end}")
                for chunk in _chunks(resp["Body"]):
                    os.pwrite(fd, chunk, pos)
                    pos += len(chunk)
                    with lock:
                        done += len(chunk)
                        if on_progress:
                            on_progress(done, size)
                if pos > end:
                    return
            except Exception:
                if attempt == RETRIES - 1:
                    raise
                time.sleep(min(0.2 * 2 ** attempt, 5))  # back-off, then resume at `pos`
        raise OperationFailed(f"download of {key} kept failing at byte {pos}")

    try:
        os.ftruncate(fd, size)
        with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            list(pool.map(fetch, range(0, size, RANGE_SIZE)))
        os.fsync(fd)
    except BaseException as exc:
        os.close(fd)
        dest.unlink(missing_ok=True)
        if isinstance(exc, OperationFailed):
            raise
        raise OperationFailed(f"download of s3://{config.bucket}/{key} failed: "
                              f"{describe_error(exc)}",
                              "Check the endpoint and credentials, then retry.") from None
    os.close(fd)
    return size


def _chunks(body: Any) -> Iterator[bytes]:
    while chunk := body.read(MiB):
        yield chunk


def upload_backup(settings: Settings, spec: str, emit: Emit) -> str:
    """`pgrunbook upload`: copy a complete local backup whose checksum matches to S3 (retry a
    failed upload). Returns the archive's key."""
    from tui.core.operation import operation
    from tui.core.restore import resolve_backup, sha256_matches

    s3 = s3_config(settings)
    if s3 is None:
        raise ConfigError("S3 is not configured.", "Set BACKUP_S3_BUCKET in .env.deployment.")
    entry = resolve_backup(settings, spec)
    if entry.meta is None or not entry.complete:
        raise OperationFailed(f"backup {entry.name} is not complete: {'; '.join(entry.problems)}.")
    if not sha256_matches(entry):
        raise OperationFailed(f"backup {entry.name} is damaged (checksum mismatch): not uploaded.")
    with operation(settings, "upload", emit, arguments={"backup": entry.name,
                                                         "bucket": s3.bucket},
                   no_target=True) as op:
        op.emit(PhaseStarted("uploading", f"{entry.name} to s3://{s3.bucket}/{s3.prefix}"
                                          f"{entry.name[:15]}/"))
        try:
            key = upload_existing(s3, entry.path, entry.meta)
        except PgRunbookError as exc:
            raise OperationFailed(f"upload of {entry.name} failed: {exc.message}",
                                  "The local backup is intact; retry later.") from None
        except Exception as exc:
            raise OperationFailed(f"upload of {entry.name} failed: {describe_error(exc)}",
                                  "The local backup is intact; retry later.") from None
        op.end.update(backup=entry.name, s3_key=key)
    return f"s3://{s3.bucket}/{key}"
