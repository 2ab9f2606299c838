"""The registries with every built-in plug-in in them: look searchers, models and readers up here.

:mod:`embdim.registry` holds the registries and imports nothing; each built-in plug-in module registers
itself when it is imported. This module imports them all, so that a lookup through it sees every
built-in method, model and reader, and every plug-in a user's module registered::

    from embdim.plugins import SEARCHERS
    SEARCHERS.get("dml")             # the class
    "hash" in SEARCHERS              # True
"""

from __future__ import annotations

# Imported for what importing them does: each module registers its built-ins (the "synthetic" reader
# lives outside data.readers).
from embdim import models, searchers  # noqa: F401
from embdim.data import readers, synthetic  # noqa: F401
from embdim.registry import MODELS, READERS, SEARCHERS

__all__ = ["MODELS", "READERS", "SEARCHERS"]
