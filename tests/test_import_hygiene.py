"""The engine and the CLI never load Textual: cron jobs stay light and the split stays real."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_core_and_cli_do_not_import_textual() -> None:
    core = ROOT / "tui" / "core"
    modules = sorted(  # every engine module, the restore package's too
        "tui.core." + ".".join(p.relative_to(core).with_suffix("").parts).removesuffix(".__init__")
        for p in core.rglob("*.py")
    )
    cli_modules = sorted(  # every module of the CLI package (its __main__ would run it)
        "tui.cli." + p.stem for p in (ROOT / "tui" / "cli").glob("*.py")
        if p.stem not in ("__init__", "__main__")
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules + ['tui.core', 'tui.cli'] + cli_modules!r}: "
        "importlib.import_module(m)\n"
        "import tui.cli\n"
        "tui.cli.build_parser()\n"
        "bad = sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.'))\n"
        "print(len(sys.modules))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) > 50  # the imports really happened
