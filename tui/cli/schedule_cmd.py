"""`pgrunbook schedule --systemd|--cron`: the SOP's rhythm (daily backup, hourly health, monthly
drill, daily prune) as systemd units or crontab lines for this install (tui.core.schedule).

stdout is the units (each after a `# /etc/systemd/system/NAME` line) or the crontab, so it can
be redirected; with `--output-dir` the unit files are written there instead and stdout says
what was written and the commands that install them. Warnings go to stderr.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tui.cli.render import _err, _out
from tui.core.errors import EXIT_OK, ConfigError
from tui.core.settings import Settings


def cmd_schedule(args: argparse.Namespace, settings: Settings) -> int:
    from tui.core.schedule import (
        SYSTEMD_DIR,
        crontab,
        install_commands,
        install_facts,
        systemd_units,
        write_units,
    )

    output_dir = getattr(args, "output_dir", None)
    force = bool(getattr(args, "force", False))
    if output_dir and not args.systemd:
        raise ConfigError("--output-dir writes systemd unit files: it goes with --systemd.",
                          "For cron, redirect the output: pgrunbook schedule --cron > FILE.")
    if force and not output_dir:
        raise ConfigError("--force replaces files in --output-dir: it needs --output-dir DIR.")
    install = install_facts(settings, user=getattr(args, "user", None),
                            target=settings.target.name if args.target else None,
                            prometheus_file=getattr(args, "prometheus", None))
    for warning in install.warnings:
        _err(f"warning: {warning}")
    if not args.systemd:
        _out(crontab(install).rstrip("\n"))
        return EXIT_OK
    units = systemd_units(install)
    if output_dir:
        directory = Path(output_dir).expanduser().absolute()
        for unit in write_units(units, directory, force=force):
            _out(f"{unit.state}: {unit.path}")
        _out("Install and start them with:")
        _out("  " + " && \\\n    ".join(install_commands(units, directory)))
        return EXIT_OK
    for name, text in units.items():
        _out(f"# {SYSTEMD_DIR / name}")
        _out(text)
    _out("# Install: save each file above as the path in its header line (or let pgrunbook write")
    _out("# them: add --output-dir DIR), then run:")
    for command in install_commands(units, None):
        _out(f"#   {command}")
    return EXIT_OK
