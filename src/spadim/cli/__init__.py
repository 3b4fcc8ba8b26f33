"""The command line: a thin shell over the package's functions (flags in :mod:`.args` and :mod:`.parser`,
handlers in :mod:`.commands`)."""

from .parser import build_parser, main

__all__ = ["build_parser", "main"]
