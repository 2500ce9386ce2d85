"""`pgrunbook demo`: a newcomer's first command, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.conftest import Server, clean_env


def run(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tui", *args], cwd=cwd, env=env or clean_env(),
                          capture_output=True, text=True, timeout=300)


def test_demo_starts_backs_up_lists_and_stops(tmp_path: Path, server: Server,
                                              pagila_db: str) -> None:
    # Another database's settings exported, as the SOP's `export $(grep -v '^#'
    # .env.deployment | xargs)` leaves them: the demo must neither read nor write it.
    exported = {**clean_env(), "SUPABASE_DB_HOST": "127.0.0.1",
                "SUPABASE_DB_PORT": str(server.port), "SUPABASE_DB_NAME": pagila_db,
                "SUPABASE_DB_PASSWORD": server.password}
    before = server.psql(pagila_db, "-Atc", "SELECT count(*) FROM pg_class").stdout
    proc = run(tmp_path, "demo", "--rows", "5000", env=exported)
    try:
        assert proc.returncode == 0, proc.stderr
        assert "Backup complete" in proc.stdout and "_manual" in proc.stdout
        env_file = tmp_path / "pgrunbook-demo" / "demo.env"
        assert oct(env_file.stat().st_mode & 0o777) == "0o600"
        # The README sources it in a shell to reach the database with psql.
        sourced = subprocess.run(["sh", "-c", f"set -a; . {env_file}; echo $SUPABASE_DB_PORT"],
                                 capture_output=True, text=True, check=False)
        assert sourced.returncode == 0 and sourced.stderr == "" and sourced.stdout.strip()
        listing = run(tmp_path, "--env-file", str(env_file), "list", "--json", "--verify")
        entries = json.loads(listing.stdout)
        # A lived-in inventory: kinds and ages, the data growing from one backup to the next,
        # every archive complete and matching its checksum.
        assert [e["kind"] for e in entries] == ["manual", "manual", "pre-migration", "release"]
        assert all(e["problems"] == [] for e in entries), entries
        ages = [datetime.now(UTC) - datetime.fromisoformat(e["created_at"]) for e in entries]
        assert ages[0] < timedelta(minutes=5) and timedelta(days=9) < ages[-1] < timedelta(days=10)
        assert ages == sorted(ages)
        counts = []
        for e in entries:
            meta = json.loads(Path(e["path"] + ".meta").read_text())
            rows = {f'{t["schema"]}.{t["name"]}': t["rows"] for t in meta["tables"]}
            assert rows["auth.users"] == 100
            counts.append(rows["public.transactions"])
        assert counts == [9500, 8500, 7000, 5000]
        # The README's restore on the demo, still with the other database exported.
        restored = run(tmp_path, "--env-file", str(env_file), "restore", "latest", "--yes",
                       env=exported)
        assert restored.returncode == 0, restored.stderr
        assert f"127.0.0.1:{server.port}" not in restored.stderr + restored.stdout
        assert server.psql(pagila_db, "-Atc", "SELECT count(*) FROM pg_class").stdout == before
        # Running it again reuses the running demo database.
        again = run(tmp_path, "demo")
        assert again.returncode == 0 and "already running" in again.stderr
    finally:
        stopped = run(tmp_path, "demo", "--stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    after = run(tmp_path, "--env-file", str(tmp_path / "pgrunbook-demo" / "demo.env"), "backup")
    assert after.returncode == 1 and "connection refused" in after.stderr
