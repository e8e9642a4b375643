"""Reading TOML tables with every problem collected (key path + message), not raised."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


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
