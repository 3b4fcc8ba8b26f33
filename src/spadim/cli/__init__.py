"""The command line: a thin shell over the package's functions (argument parsing in :mod:`.args`)."""

from .commands import build_parser, main

__all__ = ["build_parser", "main"]
