"""Checks of library arguments that raise RsconvertError with the value and what is expected."""

from __future__ import annotations

from collections.abc import Collection

from converter.errors import RsconvertError


def require_choice(label: str, value, choices: Collection) -> None:
    if value not in choices:
        raise RsconvertError(f"Invalid {label} {value!r}; expected one of "
                             f"{', '.join(map(str, choices))}.")


def require_at_least(label: str, value, minimum: int, expected: str) -> None:
    """Raise unless `value` >= `minimum`; `expected` describes the valid values in words."""
    if value < minimum:
        raise RsconvertError(f"Invalid {label} {value!r}; expected {expected}.")
