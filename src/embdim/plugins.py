"""The registries with every built-in plug-in in them: look searchers, models and readers up here.

:mod:`embdim.registry` holds the registries and imports nothing; each built-in plug-in module registers
itself when it is imported. This module imports them all, so that a lookup through it sees every
built-in method, model and reader, and every plug-in a user's module registered::

    from embdim.plugins import SEARCHERS
    SEARCHERS.get("dml")             # the class
    "hash" in SEARCHERS              # True
"""

from __future__ import annotations

import embdim.data.readers
import embdim.data.synthetic
import embdim.models
import embdim.searchers
from embdim.registry import MODELS, READERS, SEARCHERS

#: The modules whose import registered the built-ins (the "synthetic" reader lives outside data.readers).
BUILTIN_PACKAGES = (embdim.data.readers, embdim.data.synthetic, embdim.models, embdim.searchers)

__all__ = ["BUILTIN_PACKAGES", "MODELS", "READERS", "SEARCHERS"]
