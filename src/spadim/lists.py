"""The one parser for comma-separated lists (layers, methods, detectors, classes, numbers)."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence, TypeVar

from .errors import SpadimError

T = TypeVar("T")


def parse_list(
    text: str | Iterable,
    what: str,
    name: str,
    choices: Sequence | None = None,
    convert: Callable[[str], T] = str.strip,
    example: str = "",
) -> list[T]:
    """'a, b' -> ['a', 'b'] in the given order.

    Empty lists, values ``convert`` rejects, values outside ``choices`` and repeated
    values raise SpadimError naming the parameter ``name`` (written `name`, which the command
    line shows as its flag): a repeated class would be counted twice in a mean, so it is an
    error rather than silently merged.
    """
    items = [str(i).strip() for i in (text.split(",") if isinstance(text, str) else text)]
    items = [i for i in items if i]
    hint = f" (e.g. `{name}={example}`)" if example else ""
    if not items:
        raise SpadimError(f"`{name}` is empty: give a comma-separated list of {what}s{hint}")
    values = []
    for item in items:
        try:
            value = convert(item)
        except ValueError:
            raise SpadimError(f"{item!r} is not a valid {what} in `{name}`{hint}") from None
        if choices is not None and value not in choices:
            raise SpadimError(
                f"unknown {what} {item!r} in `{name}`: choose from {', '.join(map(str, choices))}{hint}"
            )
        if value in values:
            raise SpadimError(f"{what} {item!r} is given twice in `{name}`: list each {what} once{hint}")
        values.append(value)
    return values
