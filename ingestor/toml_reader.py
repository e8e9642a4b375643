"""Settings declared once (``knob``), and TOML tables read with every problem collected
(key path + message), not raised."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
D = TypeVar("D")


@dataclass(frozen=True, slots=True)
class Problem:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class TableReader:
    """Typed reads from TOML tables; wrong or unknown keys become Problems, not exceptions."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(Problem(key, message))

    def table(self, parent: Mapping[str, Any], name: str, prefix: str) -> dict[str, Any]:
        value = parent.get(name, {})
        if not isinstance(value, dict):
            self.problem(prefix + name, f"must be a table ([{prefix}{name}])")
            return {}
        return value

    def known(self, table: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, sorted(allowed), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.problem(prefix + key, f"unknown key{hint}")

    def value(
        self,
        table: Mapping[str, Any],
        key: str,
        prefix: str,
        kind: type[T],
        default: T,
        check: Callable[[T], str | None] | None = None,
    ) -> T:
        if key not in table:
            return default
        value = table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            self.problem(
                prefix + key, f"must be {type_name(kind)}, got {type(value).__name__} {value!r}"
            )
            return default
        message = check(value) if check else None
        if message:
            self.problem(prefix + key, message)
            return default
        return value


def type_name(kind: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        kind, kind.__name__
    )


def positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def non_negative(value: float) -> str | None:
    return "must be zero or more" if value < 0 else None


def one_of(options: tuple[str, ...]) -> Callable[[str], str | None]:
    return lambda value: None if value in options else f"must be one of {', '.join(options)}"


# ---- settings declared once ---------------------------------------------------------------
# A knob is a dataclass field that is also a setting: its name, type and default are the
# field's; `knob()` adds the one-line help, the TOML key (when it carries a unit the field's
# name does not), the table (when the class spans several), the validation, and whether
# `ingestor ingest` takes it as a flag. The TOML reader, the command-line flags and the
# shipped example file are all derived from these declarations.

KNOB = "ingestor.knob"


@dataclass(frozen=True, slots=True)
class Knob:
    help: str
    key: str = ""  # the TOML key, when it differs from the field's name
    table: str = ""  # which of the class's TOML tables holds it (for classes spanning several)
    check: Callable[[Any], str | None] | None = None
    flag: bool = False  # also an option of `ingestor ingest` (--field-name)
    example: object = None  # shown in the example file instead of the default


def knob(
    default: T,
    help: str,
    *,
    key: str = "",
    table: str = "",
    check: Callable[[Any], str | None] | None = None,
    flag: bool = False,
    example: object = None,
) -> T:
    """A dataclass field declared as a setting (see the module's note above)."""
    return field(default=default, metadata={KNOB: Knob(help, key, table, check, flag, example)})


@dataclass(frozen=True, slots=True)
class Declared:
    """One knob of a settings class, resolved: field name, TOML key, type and default."""

    name: str
    key: str
    kind: type
    default: Any
    knob: Knob


@functools.cache
def knobs(cls: type, table: str | None = None) -> tuple[Declared, ...]:
    """The knobs ``cls`` declares, in field order; with ``table``, only that table's."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        declared = f.metadata.get(KNOB)
        if declared is None or (table is not None and declared.table != table):
            continue
        found.append(Declared(f.name, declared.key or f.name, hints[f.name], f.default, declared))
    return tuple(found)


def read_knobs(
    r: TableReader, table: Mapping[str, Any], prefix: str, base: D, section: str = ""
) -> D:
    """``base`` with each of its class's knobs in ``section`` replaced by the table's value
    (a missing or wrong value keeps ``base``'s, the latter with a Problem)."""
    values: dict[str, Any] = {}
    cls: Any = type(base)
    for d in knobs(cls, section):
        current = getattr(base, d.name)
        if d.kind is Path:
            text = r.value(table, d.key, prefix, str, str(current), d.knob.check)
            values[d.name] = Path(text)
        else:
            values[d.name] = r.value(table, d.key, prefix, d.kind, current, d.knob.check)
    return dataclasses.replace(base, **values)  # type: ignore[type-var]


def knob_keys(*classes: tuple[type, str]) -> set[str]:
    """The TOML keys that (class, table) pairs declare."""
    return {d.key for cls, table in classes for d in knobs(cls, table)}


def toml_value(value: object) -> str:
    """``value`` written as TOML (the types knobs have)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
