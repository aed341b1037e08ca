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


def require_crop_padding(crop_padding: int) -> None:
    """Raise unless the eval crop padding is 0 or more pixels."""
    require_at_least("crop padding", crop_padding, 0, "0 or more pixels (the release used 32)")


def require_image_size(image_size: int) -> None:
    """Raise unless the image side is at least 1 pixel."""
    require_at_least("image size", image_size, 1, "a positive number of pixels, e.g. 224")
