"""Memory budgets, in one place: the uniform model's bytes, what a budget means, when a plan has
landed on it, and the controller that steers a size penalty's weight onto it.

A method aims at a :class:`Budget` its own way (``Searcher.for_budget``): uniform and MLET by their
width (:func:`uniform_dim_for_budget`), MDE by the scale of its power law, PEP by its sparsity,
DML and AMTL with a :class:`PenaltyController` on their size penalty. A budget a method cannot reach
raises :class:`BudgetUnreachable`; reports say so instead of substituting another budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from embdim.data.schema import FieldInfo
from embdim.options import Options
from embdim.plan import EmbeddingPlan
from embdim.storage import FLOAT_BYTES

LANDING_TOLERANCE = 0.1
"""A plan lands on its budget when its bytes are within this share of the target."""


def uniform_bytes(fields: Sequence[FieldInfo], dim: int) -> int:
    """Bytes of the uniform model's tables, ``n x dim`` float32: what budget fractions are shares of."""
    return sum(f.vocab_size for f in fields) * dim * FLOAT_BYTES


class Budget(Options):
    """A memory target for the slim embedding, shared by every method that can aim at one.

    ``kind``: ``fraction`` of the uniform model's embedding bytes, absolute ``bytes``, or
    embedding ``params``.
    """

    kind: Literal["fraction", "bytes", "params"] = Field("fraction", description="what value measures")
    value: float = Field(gt=0, description="the target: a fraction in (0, 1], or a count of bytes / parameters")

    @model_validator(mode="before")
    @classmethod
    def _from_number(cls, value: Any) -> Any:
        """A bare number is a fraction (``method.budget=0.5``, ``budgets: [0.5, 0.2]``)."""
        return {"kind": "fraction", "value": value} if isinstance(value, int | float) else value

    @model_validator(mode="after")
    def _fraction_at_most_one(self) -> Budget:
        if self.kind == "fraction" and self.value > 1:
            raise ValueError(
                f"a fraction of the uniform model's bytes lies in (0, 1], got {self.value:g} "
                "(a larger model is no budget; use kind: bytes or params for absolute targets)"
            )
        return self

    def target_bytes(self, full_bytes: int, bytes_per_param: float = FLOAT_BYTES) -> float:
        """The target in bytes, given the uniform model's bytes (params count ``bytes_per_param`` each)."""
        if self.kind == "fraction":
            return self.value * full_bytes
        return self.value if self.kind == "bytes" else self.value * bytes_per_param

    def share(self, fields: Sequence[FieldInfo], dim: int) -> float:
        """The target as a share of the uniform ``n x dim`` tables' bytes (what a controller steers to)."""
        full = uniform_bytes(fields, dim)
        return self.target_bytes(full) / full

    def landed(self, plan: EmbeddingPlan, tolerance: float = LANDING_TOLERANCE) -> bool:
        """Whether ``plan`` is within ``tolerance`` (relative) of this target."""
        if self.kind == "params":
            return abs(plan.num_params - self.value) <= tolerance * self.value
        target = self.target_bytes(plan.full_bytes)
        return abs(plan.num_bytes - target) <= tolerance * target


class BudgetUnreachable(ValueError):
    """A method cannot aim at the requested memory budget (reports say so instead of substituting)."""


def uniform_dim_for_budget(
    fields: list[FieldInfo], dim: int, budget: Budget, tolerance: float = LANDING_TOLERANCE
) -> int:
    """The uniform width whose ``n x d'`` tables land within ``tolerance`` of ``budget`` (bytes relative to
    ``n x dim``); raises :class:`BudgetUnreachable` when no integer width does."""
    rows = sum(f.vocab_size for f in fields)
    target = budget.target_bytes(uniform_bytes(fields, dim))
    best = max(1, round(target / (rows * FLOAT_BYTES)))
    landed = abs(best * rows * FLOAT_BYTES - target) <= tolerance * target
    if not landed or best > dim:
        raise BudgetUnreachable(
            f"no uniform width lands within {tolerance:.0%} of {target:,.0f} bytes "
            f"(nearest: d={best}, {best * rows * FLOAT_BYTES:,} bytes)"
        )
    return best


@dataclass
class PenaltyController:
    """Steers the weight ``lam`` of a size penalty from the relative size error ``size / target - 1``
    (positive: too large) after each measurement.

    ``law``:
        ``pi``: proportional-integral, a signed weight (a negative one regrows sizes that went too
            far): ``integral += ki * e``, ``lam = integral + kp * e``, both clipped to ``bounds``.
        ``log``: multiplicative, a positive weight: ``lam *= exp(kp * e)`` with ``e`` clipped to
            ``[-error_cap, error_cap]`` and ``lam`` to ``bounds``.
    """

    lam: float
    law: Literal["pi", "log"]
    kp: float
    bounds: tuple[float, float]
    ki: float = 0.0
    error_cap: float = math.inf
    integral: float | None = None

    def __post_init__(self) -> None:
        if self.integral is None:
            self.integral = self.lam

    def update(self, error: float) -> float:
        """The weight after a measurement with relative size error ``error``."""
        lo, hi = self.bounds
        if self.law == "pi":
            self.integral = min(max(self.integral + self.ki * error, lo), hi)
            self.lam = min(max(self.integral + self.kp * error, lo), hi)
        else:
            error = min(max(error, -self.error_cap), self.error_cap)
            self.lam = min(max(self.lam * math.exp(self.kp * error), lo), hi)
        return self.lam
