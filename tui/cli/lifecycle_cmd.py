"""`pgrunbook lifecycle [--apply] [--json]`: the retention policy as the bucket's S3 lifecycle
rules (tui.core.lifecycle).

Without --apply, stdout is the configuration itself, so
`pgrunbook lifecycle > s3-lifecycle-policy.json` writes the SOP's file; how it differs from the
bucket's rules and how to apply it go to stderr. With --apply, stdout reports what was written
and re-tagged. --json prints one object either way.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from tui.cli.render import Renderer, _err, _out
from tui.core.errors import EXIT_OK
from tui.core.settings import Settings


def _changes(plan: Any, applied: bool = False) -> list[str]:
    """How the bucket's rules differ from the policy's, one line per rule ID. After --apply,
    only what changed and what was kept."""
    if plan.current is None:
        head = "The bucket had no lifecycle configuration." if applied else \
            "The bucket has no lifecycle configuration."
    elif not plan.changed:
        head = "The bucket's lifecycle configuration already matches the policy."
    else:
        head = "Changes to the bucket's lifecycle configuration:" if applied else \
            "Against the bucket's lifecycle configuration:"
    if plan.changed and not applied:
        shown = plan.changes
    else:
        shown = [c for c in plan.changes if c.change in ("added", "changed", "removed", "kept")]
    return [head, *(f"  {c.describe()}" for c in shown)]


def _days(plan: Any) -> str:
    d = plan.days
    return (f"daily {d['daily']} days, weekly {d['weekly']} days, monthly {d['monthly']} days, "
            f"emergency {d['emergency']} days; release and pinned: kept for ever; unfinished "
            f"uploads aborted after {d['abort']} day(s)")


def cmd_lifecycle(args: argparse.Namespace, settings: Settings) -> int:
    from tui.core.lifecycle import apply_lifecycle, plan_lifecycle

    as_json = bool(getattr(args, "json", False))
    if getattr(args, "apply", False):
        result = apply_lifecycle(settings, Renderer(verbose=getattr(args, "verbose", False)))
        if as_json:
            _out(json.dumps(result.as_json(), indent=2, ensure_ascii=False))
            return EXIT_OK
        plan = result.plan
        where = f"s3://{plan.bucket}/{plan.prefix}"
        if result.rules_written:
            kept = [c.rule_id for c in plan.changes if c.change == "kept"]
            _out(f"{where}: {len(result.rules_written)} pgrunbook lifecycle rules written"
                 + (f" (kept: {', '.join(kept)})" if kept else "") + ".")
        else:
            _out(f"{where}: the lifecycle rules already match the policy; nothing written.")
        if result.rules_written:
            for line in _changes(plan, applied=True):
                _out(line)
        _out(f"  {_days(plan)}")
        if result.retagged:
            backups = len(result.retagged)
            _out(f"Tagged {result.objects_retagged} objects of {backups} backup(s) with their "
                 "retention class:")
            for item in result.retagged:
                was = f", was {item.previous}" if item.previous else ""
                _out(f"  {item.name}: {item.retention}{was}")
        else:
            _out("Every backup in S3 already carries its retention class.")
        return EXIT_OK
    plan = plan_lifecycle(settings)
    if as_json:
        _out(json.dumps({**plan.as_json(), "applied": False}, indent=2, ensure_ascii=False))
        return EXIT_OK
    _err(f"Lifecycle rules for s3://{plan.bucket}/{plan.prefix} from the retention policy "
         f"({_days(plan)}).")
    for line in _changes(plan):
        _err(line)
    if plan.changed or plan.current is None:
        _err("Not applied. Apply it with `pgrunbook lifecycle --apply` (the bucket's other "
             "rules are kept), or save this output as s3-lifecycle-policy.json and run:\n"
             f"  aws s3api put-bucket-lifecycle-configuration --bucket {plan.bucket} "
             "--lifecycle-configuration file://s3-lifecycle-policy.json")
    _out(json.dumps(plan.configuration, indent=2, ensure_ascii=False))
    return EXIT_OK
