"""Off-site copies against a real S3-compatible endpoint over HTTP (moto's server), with a
fault-injecting proxy in front of it."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.conftest import Server, Workspace
from tests.s3_helpers import FaultProxy, Rule
from tui.core.cluster import free_port

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
         "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def moto_port() -> Iterator[int]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield port
    server.stop()


@pytest.fixture
def bucket(moto_port: int) -> str:
    name = f"pgrb-{uuid.uuid4().hex[:12]}"
    client(moto_port).create_bucket(Bucket=name)
    return name


@pytest.fixture
def proxy(moto_port: int) -> Iterator[FaultProxy]:
    p = FaultProxy(moto_port).start()
    yield p
    p.stop()


def client(port: int):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}",
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        region_name="us-east-1")


def s3_env(ws: Workspace, bucket: str, endpoint: str, **extra: str) -> None:
    ws.write_env(BACKUP_S3_BUCKET=bucket, AWS_ENDPOINT_URL=endpoint, **CREDS, **extra)


def keys(port: int, bucket: str) -> list[str]:
    resp = client(port).list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in resp.get("Contents", []))


def test_backups_land_in_the_sops_layout(workspace: Workspace, moto_port: int,
                                         bucket: str) -> None:
    s3_env(workspace, bucket, f"http://127.0.0.1:{moto_port}")
    out = json.loads(workspace.run("backup", "--json", check=True).stdout)
    stamp = out["name"][:15]
    assert keys(moto_port, bucket) == [f"backups/{stamp}/database.backup",
                                       f"backups/{stamp}/metadata.json",
                                       f"backups/{stamp}/roles.sql"]
    c = client(moto_port)
    roles = c.get_object(Bucket=bucket, Key=f"backups/{stamp}/roles.sql")["Body"].read()
    assert roles == (Path(out["path"] + ".roles.sql")).read_bytes()
    body = c.get_object(Bucket=bucket, Key=f"backups/{stamp}/database.backup")["Body"].read()
    local_meta = json.loads(Path(out["meta_path"]).read_text())
    remote_meta = json.loads(c.get_object(Bucket=bucket,
                                          Key=f"backups/{stamp}/metadata.json")["Body"].read())
    assert remote_meta == local_meta
    assert hashlib.sha256(body).hexdigest() == out["sha256"] == local_meta["archive"]["sha256"]
    tags = {t["Key"]: t["Value"] for t in c.get_object_tagging(
        Bucket=bucket, Key=f"backups/{stamp}/database.backup")["TagSet"]}
    # The first backup in the bucket holds its month (tui.core.lifecycle).
    assert tags == {"kind": "manual", "sha256": out["sha256"], "pgrunbook-retention": "monthly"}
    # S3 checked what arrived against the checksum sent with it.
    head = c.head_object(Bucket=bucket, Key=f"backups/{stamp}/database.backup",
                         ChecksumMode="ENABLED")
    assert head.get("ChecksumCRC32"), head
    assert c.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    listing = json.loads(workspace.run("list", "--json", check=True).stdout)
    assert listing[0]["location"] == "both" and listing[0]["problems"] == []
    assert listing[0]["s3_key"] == f"backups/{stamp}/database.backup"


def test_round_trip_from_s3_after_the_local_copy_is_gone(workspace: Workspace, server: Server,
                                                         moto_port: int, bucket: str) -> None:
    s3_env(workspace, bucket, f"http://127.0.0.1:{moto_port}")
    out = json.loads(workspace.run("backup", "--json", check=True).stdout)
    meta = json.loads(Path(out["meta_path"]).read_text())
    roles = Path(out["path"] + ".roles.sql")
    kept = roles.read_bytes()
    Path(out["path"]).unlink()
    Path(out["meta_path"]).unlink()
    roles.unlink()
    with server.connect(workspace.dbname) as conn:
        conn.execute("DELETE FROM public.film_actor WHERE actor_id < 50")
    listing = json.loads(workspace.run("list", "--json", check=True).stdout)
    assert [e["location"] for e in listing] == ["s3"]
    proc = workspace.run("restore", f"backups/{out['name'][:15]}/database.backup", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert "VERIFICATION PASS" in proc.stdout and "downloaded" in proc.stderr
    assert roles.read_bytes() == kept and oct(roles.stat().st_mode & 0o777) == "0o600"
    counts = server.counts(workspace.dbname, [(t["schema"], t["name"]) for t in meta["tables"]])
    assert counts == {(t["schema"], t["name"]): t["rows"] for t in meta["tables"]}
    # `latest` finds an S3-only backup too.
    Path(out["path"]).unlink()
    Path(out["meta_path"]).unlink()
    latest = workspace.run("restore", "latest", "--yes", "--json")
    assert latest.returncode == 0, latest.stderr
    assert json.loads(latest.stdout)["backup"] == out["name"]


def test_a_corrupted_object_in_s3_is_refused_before_the_target_is_touched(
    workspace: Workspace, server: Server, moto_port: int, bucket: str
) -> None:
    s3_env(workspace, bucket, f"http://127.0.0.1:{moto_port}")
    out = json.loads(workspace.run("backup", "--json", check=True).stdout)
    key = f"backups/{out['name'][:15]}/database.backup"
    data = bytearray(client(moto_port).get_object(Bucket=bucket, Key=key)["Body"].read())
    data[500] ^= 0xFF
    client(moto_port).put_object(Bucket=bucket, Key=key, Body=bytes(data))
    Path(out["path"]).unlink()
    Path(out["meta_path"]).unlink()
    with server.connect(workspace.dbname) as conn:
        conn.execute("DELETE FROM public.film_actor WHERE actor_id < 50")
    before = server.counts(workspace.dbname, [("public", "film_actor")])
    proc = workspace.run("restore", key, "--yes")
    assert proc.returncode == 1 and "damaged" in proc.stderr and "Nothing was changed" in proc.stderr
    assert server.counts(workspace.dbname, [("public", "film_actor")]) == before
    assert not list(workspace.backup_dir.glob("*.backup"))


def test_inventory_shows_every_s3_problem(workspace: Workspace, moto_port: int, bucket: str,
                                          proxy: FaultProxy) -> None:
    # The proxy makes a fresh multipart upload look two days old (time travel is the one
    # thing the endpoint cannot do).
    def age(method: str, path: str, body: bytes) -> bytes:
        if method == "GET" and "uploads" in path:
            return re.sub(rb"<Initiated>[^<]+</Initiated>",
                          b"<Initiated>2020-01-01T00:00:00.000Z</Initiated>", body)
        return body

    proxy.rewrite = age
    s3_env(workspace, bucket, proxy.url)
    workspace.run("backup", "uploaded", check=True)
    workspace.run("backup", "localonly", "--no-upload", check=True)
    c = client(moto_port)
    c.put_object(Bucket=bucket, Key="backups/20250101_000000/database.backup", Body=b"x" * 10)
    c.create_multipart_upload(Bucket=bucket, Key="backups/20250102_000000/database.backup")
    listing = {e["name"]: e for e in json.loads(workspace.run("list", "--json",
                                                               check=True).stdout)}
    problems = {n: " ".join(e["problems"]) for n, e in listing.items()}
    uploaded = next(n for n in listing if n.endswith("_uploaded"))
    localonly = next(n for n in listing if n.endswith("_localonly"))
    assert problems[uploaded] == "" and listing[uploaded]["location"] == "both"
    assert "never uploaded" in problems[localonly]
    assert "incomplete upload" in problems["20250101_000000"]
    orphan = listing["backups/20250102_000000/database.backup"]
    assert "orphaned multipart upload" in " ".join(orphan["problems"])
    # A checksum that differs between local and S3.
    stamp = uploaded[:15]
    meta_key = f"backups/{stamp}/metadata.json"
    remote = json.loads(c.get_object(Bucket=bucket, Key=meta_key)["Body"].read())
    remote["archive"]["sha256"] = "0" * 64
    c.put_object(Bucket=bucket, Key=meta_key, Body=json.dumps(remote).encode())
    listing = {e["name"]: e for e in json.loads(workspace.run("list", "--json",
                                                               check=True).stdout)}
    assert "checksum differs between local and S3" in listing[uploaded]["problems"]


def test_uploads_and_downloads_survive_transient_faults(workspace: Workspace, server: Server,
                                                        moto_port: int, bucket: str,
                                                        proxy: FaultProxy) -> None:
    proxy.rules = [Rule("PUT", "database.backup", "500", times=1),
                   Rule("PUT", "database.backup", "503", times=1),
                   Rule("PUT", "metadata.json", "503", times=1),
                   Rule("GET", "database.backup", "drop-mid-body", times=1),
                   Rule("PUT", "database.backup?tagging", "stall", times=1)]
    s3_env(workspace, bucket, proxy.url, BACKUP_S3_TIMEOUT="2")
    out = json.loads(workspace.run("backup", "--json", check=True).stdout)
    assert out["upload_error"] is None and out["s3_key"]
    assert [r.hits for r in proxy.rules] == [1, 1, 1, 0, 1]
    Path(out["path"]).unlink()
    Path(out["meta_path"]).unlink()
    proc = workspace.run("download", out["name"][:15])
    assert proc.returncode == 0, proc.stderr
    assert proxy.rules[3].hits == 1
    assert hashlib.sha256(Path(out["path"]).read_bytes()).hexdigest() == out["sha256"]


def test_when_the_endpoint_stays_down_the_local_backup_is_kept(
    workspace: Workspace, moto_port: int, bucket: str, proxy: FaultProxy
) -> None:
    proxy.rules = [Rule("PUT", "/", "503", times=None)]
    s3_env(workspace, bucket, proxy.url)
    proc = workspace.run("backup", "--json")
    assert proc.returncode == 1
    assert "backed up locally, upload failed" in proc.stderr and "Traceback" not in proc.stderr
    out = json.loads(proc.stdout)
    assert Path(out["path"]).exists() and Path(out["meta_path"]).exists()
    assert keys(moto_port, bucket) == []  # nothing in S3 looks complete
    assert client(moto_port).list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    audit = [json.loads(x) for x in (workspace.backup_dir / "audit.log").read_text().splitlines()]
    assert audit[-1]["result"] == "failed" and "upload failed" in audit[-1]["error"]
    proxy.rules = []
    retry = workspace.run("upload", out["name"])
    assert retry.returncode == 0, retry.stderr
    stamp = out["name"][:15]
    assert keys(moto_port, bucket) == [f"backups/{stamp}/{leaf}" for leaf in (
        "database.backup", "metadata.json", "roles.sql")]


def test_bad_s3_settings_get_one_line_and_exit_2(workspace: Workspace) -> None:
    workspace.write_env(BACKUP_S3_BUCKET="joot", BACKUP_S3_SSE="rot13")
    proc = workspace.run("list")
    assert proc.returncode == 2 and "BACKUP_S3_SSE" in proc.stderr
    workspace.write_env(BACKUP_S3_BUCKET="s3://joot/backups")
    proc = workspace.run("list")
    assert proc.returncode == 2 and "BACKUP_S3_BUCKET" in proc.stderr


def test_an_upload_completed_before_the_backup_failed_leaves_nothing_in_the_bucket(
        workspace: Workspace, moto_port: int, bucket: str, tmp_path: Path) -> None:
    """The upload finishes while the backup still checks its archive; if a check then fails,
    the whole object is deleted again (no archive without metadata.json, no multipart)."""
    from tests.conftest import clean_env
    from tui.core.s3 import StreamUpload, s3_config
    from tui.core.settings import load_settings

    s3_env(workspace, bucket, f"http://127.0.0.1:{moto_port}")
    config = s3_config(load_settings(env_file=workspace.env_file, environ=clean_env()))
    assert config is not None
    archive = tmp_path / "archive"
    archive.write_bytes(bytes(range(256)) * 80_000)  # 20.5 MB: three parts
    up = StreamUpload(config, "20261124_120000", archive)
    up.start()
    up.writer_done(archive.stat().st_size)
    assert up._thread is not None
    up._thread.join(60)
    assert keys(moto_port, bucket) == [up.key]  # whole, before any metadata.json
    up.abort()
    assert keys(moto_port, bucket) == []
    assert client(moto_port).list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


async def test_home_shows_the_s3_status_at_a_glance(workspace: Workspace, moto_port: int,
                                                    bucket: str) -> None:
    from textual.widgets import Static

    from tests.conftest import clean_env
    from tui.app import make_app
    from tui.core.settings import load_settings

    s3_env(workspace, bucket, f"http://127.0.0.1:{moto_port}")
    workspace.run("backup", "shipped", check=True)
    workspace.run("backup", "kept_here", "--no-upload", check=True)
    for endpoint, expected in ((f"http://127.0.0.1:{moto_port}",
                                "Off-site copies: not uploaded: "),
                               (f"http://127.0.0.1:{free_port()}",
                                "Off-site copies: S3 unreachable: ")):
        s3_env(workspace, bucket, endpoint)
        app = make_app(load_settings(env_file=workspace.env_file, environ=clean_env()))
        async with app.run_test(size=(120, 40)) as pilot:
            await app.workers.wait_for_complete()
            await pilot.pause()
            health = str(app.screen.query_one("#health", Static).render())
            assert expected in health, health


async def test_the_browser_fetches_an_s3_only_backup_as_a_job(workspace: Workspace,
                                                               moto_port: int,
                                                               bucket: str) -> None:
    from tests.conftest import clean_env
    from tui.app import make_app
    from tui.core.settings import load_settings
    from tui.screens.browser import BrowserScreen

    s3_env(workspace, bucket, f"http://127.0.0.1:{moto_port}")
    out = json.loads(workspace.run("backup", "--json", check=True).stdout)
    for path in (Path(out["path"]), Path(out["meta_path"]), Path(out["path"] + ".roles.sql")):
        path.unlink()
    app = make_app(load_settings(env_file=workspace.env_file, environ=clean_env()))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.press("b")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert isinstance(app.screen, BrowserScreen)
        await pilot.press("f")
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
    assert Path(out["path"]).exists() and Path(out["meta_path"]).exists()
    jobs = json.loads(workspace.run("jobs", "--json", check=True).stdout)
    assert jobs[0]["operation"] == "download" and jobs[0]["status"] == "ok", jobs[0]
    assert jobs[0]["origin"] == "tui"
    audit = [json.loads(x) for x in (workspace.backup_dir / "audit.log").read_text().splitlines()]
    assert [e["result"] for e in audit if e["operation"] == "download" and e["event"] == "end"] \
        == ["ok"]
