"""Library errors on the command line: the parameters a message names become the flags that set them."""

from __future__ import annotations

import argparse
import re

# A parameter as library messages write it (spadim.errors): `name` or `name=value`, in backticks.
PARAMETER = re.compile(r"`([a-z][a-z0-9_]*)(?:=([^`]*))?`")

# Library parameters whose flag is not named after them (argparse's dest covers the rest).
FLAG_OF = {"train_dir": "--train", "test_dir": "--test", "masks_dir": "--masks"}


def command_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, str]:
    """Parameter name -> long flag, for the flags of the command that ran (its subcommands followed)."""
    flags: dict[str, str] = {}
    for action in parser._actions:
        long = [s for s in action.option_strings if s.startswith("--")]
        if long:
            flags.setdefault(action.dest, long[0])
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(args, action.dest, None) or "")
            if chosen is not None:
                flags.update(command_flags(chosen, args))
    known = set(flags.values())
    flags.update({name: flag for name, flag in FLAG_OF.items() if flag in known})
    return flags


def with_flags(message: str, flags: dict[str, str]) -> str:
    """`far=0.01` -> --far 0.01 and `far` -> --far where the command has that flag; other text as is."""

    def flag(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        if name not in flags:
            return m.group(0)
        return flags[name] if value is None else f"{flags[name]} {value}"

    return PARAMETER.sub(flag, message)
