"""`python -m tui.core.jobrun JOB_DIR`: a job's process when its starter may not fork (the
TUI has threads). The settings, the operation and the request arrive pickled on stdin, never
in a file or argv (the settings hold the password); stdin is /dev/null once they are read."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path


def main() -> int:
    from tui.core.jobs import Job, run_child

    payload = sys.stdin.buffer.read()
    settings, operation, request = pickle.loads(payload)  # noqa: S301 - from our parent
    return run_child(Job(Path(sys.argv[1])), settings, operation, request)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
