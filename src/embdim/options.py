"""The base of every typed option set (run configs, methods, models, readers, preprocessing).

Unknown keys are errors that name the key, NaN and infinity are refused (``train.lr=.inf`` would
only diverge), and a boolean is never taken for a number (``train.epochs=true`` is refused, not
read as 1), while YAML's other spellings of numbers (``1e-3`` arrives as text) are still converted.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


def _admits_bool(annotation: Any) -> bool:
    """Whether a field's type takes a bool as it is (``bool``, ``Any``, or a union or container of them)."""
    if annotation is bool or annotation is Any:
        return True
    if annotation is type(None):
        return False
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _admits_bool(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_admits_bool(arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return any(isinstance(arg, bool) for arg in typing.get_args(annotation))
    # containers (lists, dicts) validate their items themselves; other types reject bools anyway
    return origin is not None or not isinstance(annotation, type) or not issubclass(annotation, int | float)


class Options(BaseModel):
    """Strict option set: unknown keys, NaN or infinite numbers and bools given for numbers are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if not _admits_bool(annotation):
                raise ValueError(f"expected a number, got the boolean {str(value).lower()}")
        name = info.field_name or ""
        if (name == "seed" or name.endswith("_seed")) and isinstance(value, int) and value < 0:
            raise ValueError(f"a seed is a non-negative integer, got {value}")  # numpy refuses negative seeds
        return value
