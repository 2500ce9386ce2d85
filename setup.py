"""Build step: the wheel carries the runbooks.

The bundled runbooks stay data files in the top-level `runbooks/` of the repository; a built wheel
carries them as package data in `tui/runbooks/`, where `tui.core.runbook` looks first. An
editable install reads them from the checkout instead. Everything else is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

RUNBOOKS = Path(__file__).resolve().parent / "runbooks"


class BuildPyWithRunbooks(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "tui" / "runbooks"
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted(RUNBOOKS.glob("*.toml")):
            shutil.copy2(path, target / path.name)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            target = Path(self.build_lib) / "tui" / "runbooks"
            outputs += [str(target / p.name) for p in sorted(RUNBOOKS.glob("*.toml"))]
        return outputs


setup(cmdclass={"build_py": BuildPyWithRunbooks})
