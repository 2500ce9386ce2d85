"""`python -m tui.cli`: the same as `pgrunbook` (and `python -m tui`)."""

import sys

from tui.cli import main

raise SystemExit(main(sys.argv[1:]))
