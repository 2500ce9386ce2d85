"""Widgets of the TUI that Textual does not provide."""
