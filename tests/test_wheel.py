"""The built wheel is complete: installed into a fresh virtual environment outside the checkout,
it has the bundled runbooks (top-level `runbooks/` in the repository, `tui/runbooks` in the
wheel), the stylesheet, and a working `pgrunbook` command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.conftest import ROOT, clean_env
from tui.core.runbook import BUNDLED_DIR, load_runbooks

RUNBOOK_IDS = ["backup-verification", "emergency-restore", "pre-migration-backup",
               "standard-restore"]
SOURCE = ("tui/", "runbooks/", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md")


def _env() -> dict[str, str]:
    return {k: v for k, v in clean_env().items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _copy_source(dest: Path) -> None:
    """The files the build uses (tracked, or new and not ignored), without build leftovers."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
        capture_output=True, check=True).stdout.decode().split("\0")
    for rel in listed:
        if rel.startswith(SOURCE) and (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)


def test_the_checkout_reads_the_top_level_runbooks() -> None:
    assert BUNDLED_DIR == ROOT / "runbooks"
    assert sorted(b.id for b in load_runbooks()) == RUNBOOK_IDS


def test_the_wheel_installed_outside_the_checkout_has_runbooks_stylesheet_and_command(
    tmp_path: Path,
) -> None:
    src, dist, venv, elsewhere = (tmp_path / n for n in ("src", "dist", "venv", "elsewhere"))
    for d in (src, elsewhere):
        d.mkdir()
    _copy_source(src)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "--disable-pip-version-check", "-w", str(dist), str(src)], cwd=tmp_path)
    wheels = list(dist.glob("pgrunbook-*.whl"))
    assert len(wheels) == 1, wheels

    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
          "--no-index", "--disable-pip-version-check", str(wheels[0])], cwd=tmp_path)
    # The dependencies come from the development environment (no downloads), after the wheel's
    # own files: a .pth line is a plain path, so the editable install there is not loaded.
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                      "['purelib'])"], cwd=elsewhere).stdout.strip())
    (site / "dev-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    probe = (
        "import json, importlib.resources, tui\n"
        "from tui.core.runbook import BUNDLED_DIR, load_runbooks\n"
        "tcss = importlib.resources.files('tui') / 'app.tcss'\n"
        "print(json.dumps({'tui': tui.__file__, 'dir': str(BUNDLED_DIR),\n"
        "                  'ids': sorted(b.id for b in load_runbooks()),\n"
        "                  'tcss': tcss.is_file() and len(tcss.read_text()) > 0}))\n"
    )
    found = json.loads(_run([str(python), "-c", probe], cwd=elsewhere).stdout)
    assert Path(found["tui"]).resolve().is_relative_to(venv.resolve()), found
    assert Path(found["dir"]).resolve() == (site / "tui" / "runbooks").resolve(), found
    assert found["ids"] == RUNBOOK_IDS
    assert found["tcss"] is True

    script = venv / "bin" / "pgrunbook"
    assert os.access(script, os.X_OK)
    helped = _run([str(script), "--help"], cwd=elsewhere)
    assert "usage" in helped.stdout.lower() and "backup" in helped.stdout
