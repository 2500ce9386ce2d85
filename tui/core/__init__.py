"""The pgrunbook engine: settings, PostgreSQL tooling, backups, inventory and audit.

Nothing in this package imports Textual or prints: the CLI (`tui.cli`) and the TUI (`tui.app`)
are two faces that render the typed events the engine emits.
"""
