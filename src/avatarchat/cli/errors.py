"""Errors every command may raise: their own module, so that neither the subcommands nor the
benchmarks import the entry point (``cli/main.py`` imports them all)."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; ``avatarchat`` prints it as one line and exits with 2."""
