"""The health report as Prometheus metrics, in the node_exporter textfile format.

`pgrunbook health --prometheus /var/lib/prometheus/node-exporter/pgrunbook.prom` (hourly, see
`pgrunbook schedule`) leaves the file for node_exporter's textfile collector, written by
prometheus_client (a temp file beside it, then a rename: a scrape never reads half a file).
The names follow the peers' exporters (pgbackrest_exporter, barman_exporter, wal-g): timestamps
of the last successful backup per kind and of the last passed drill, the last size and
duration, counts, and a status per check (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN), every one
labelled with the target.
"""

from __future__ import annotations

import contextlib
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from tui.core.errors import ConfigError, OperationFailed
from tui.core.health import Report

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


def _ts(dt: datetime) -> float:
    return dt.timestamp()


def registry_for(report: Report) -> CollectorRegistry:
    """A prometheus_client registry holding the report's metrics."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    t = report.target
    facts = report.facts

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, ("target", *labels), registry=registry)

    gauge("pgrunbook_health_status", "Worst health check state: 0 OK, 1 WARNING, 2 CRITICAL, "
          "3 UNKNOWN.").labels(t).set(int(report.state))
    checks = gauge("pgrunbook_health_check_status", "Health check state: 0 OK, 1 WARNING, "
                   "2 CRITICAL, 3 UNKNOWN.", ("check",))
    for c in report.checks:
        checks.labels(t, c.id).set(int(c.state))
    gauge("pgrunbook_health_last_run_timestamp_seconds",
          "When the health checks ran.").labels(t).set(_ts(report.generated_at))
    last_ok = gauge("pgrunbook_backup_last_success_timestamp_seconds",
                    "When the newest good backup of the kind finished.", ("kind",))
    last_size = gauge("pgrunbook_backup_last_size_bytes",
                      "Size of the newest good backup of the kind.", ("kind",))
    last_duration = gauge("pgrunbook_backup_last_duration_seconds",
                          "How long the newest good backup of the kind took.", ("kind",))
    for kind, k in sorted(facts.kinds.items()):
        last_ok.labels(t, kind).set(_ts(k.finished_at))
        last_size.labels(t, kind).set(k.size_bytes)
        if k.duration_seconds is not None:
            last_duration.labels(t, kind).set(k.duration_seconds)
    if facts.newest_age_seconds is not None:
        gauge("pgrunbook_backup_age_seconds", "Age of the newest good backup of any kind."
              ).labels(t).set(facts.newest_age_seconds)
    count = gauge("pgrunbook_backups", "Good backups, by where their copy is.", ("location",))
    count.labels(t, "local").set(facts.good_local)
    count.labels(t, "s3").set(facts.good_s3)
    gauge("pgrunbook_backups_with_problems", "Backups incomplete or damaged (pgrunbook list)."
          ).labels(t).set(facts.with_problems)
    if facts.last_job_ok is not None:
        gauge("pgrunbook_backup_last_job_success", "1 when the last backup job succeeded, "
              "else 0.").labels(t).set(1 if facts.last_job_ok else 0)
    if facts.last_job_failed_at is not None:
        gauge("pgrunbook_backup_last_failure_timestamp_seconds",
              "When the last backup job failed.").labels(t).set(_ts(facts.last_job_failed_at))
    if facts.drill_passed_at is not None:
        gauge("pgrunbook_drill_last_success_timestamp_seconds",
              "When the last passed drill ended.").labels(t).set(_ts(facts.drill_passed_at))
    if facts.drill_failed_at is not None:
        gauge("pgrunbook_drill_last_failure_timestamp_seconds",
              "When the last failed drill ended.").labels(t).set(_ts(facts.drill_failed_at))
    drills = gauge("pgrunbook_drills", "Drills in the last 365 days, by result.", ("result",))
    drills.labels(t, "passed").set(facts.drills_passed)
    drills.labels(t, "failed").set(facts.drills_failed)
    if facts.free_bytes is not None:
        gauge("pgrunbook_backup_dir_free_bytes", "Free bytes on BACKUP_DIR's file system."
              ).labels(t).set(facts.free_bytes)
    return registry


def write_textfile(report: Report, path: Path) -> None:
    """Write the metrics to `path` atomically (node_exporter reads only `*.prom` files), 0644
    whatever the umask (the timers run with UMask=0077; node_exporter runs as another user and
    the figures are not secret). prometheus_client renders them; the temp file, whose name does
    not end in .prom, is renamed over the old one."""
    import secrets

    from prometheus_client import generate_latest

    if path.suffix != ".prom":
        raise ConfigError(f"{path} does not end in .prom: node_exporter's textfile collector "
                          "reads only *.prom files.",
                          "For example: --prometheus /var/lib/prometheus/node-exporter/"
                          "pgrunbook.prom")
    if not path.parent.is_dir():
        raise OperationFailed(f"cannot write {path}: {path.parent} does not exist.",
                              "Create it (node_exporter's --collector.textfile.directory) or "
                              "give another path.")
    data = generate_latest(registry_for(report))
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OperationFailed(f"cannot write {path}: {exc.strerror or exc}.",
                              "Check the directory's owner and mode.") from None
