"""Lookup backends by name: the one place that knows them all.

It stands above the base interface (:mod:`embdim.lookup`) and the backends themselves (the plain
torch tables there, TorchRec's in :mod:`embdim.distributed.torchrec_lookup`), so neither imports
the other's registry; a backend whose packages are missing fails here with what to install.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from embdim.lookup import Lookup, TableSpec

#: backend name -> (module, class); modules are imported on first use (TorchRec is heavy and optional)
BACKENDS: dict[str, tuple[str, str]] = {
    "torch": ("embdim.lookup", "TorchLookup"),
    "torchrec": ("embdim.distributed.torchrec_lookup", "TorchRecLookup"),
}


def create_lookup(backend: str, specs: Sequence[TableSpec], num_fields: int, sparse: bool = False) -> Lookup:
    """The ``backend``'s lookup over ``specs`` (``sparse``: sparse table gradients)."""
    try:
        module, name = BACKENDS[backend]
    except KeyError:
        raise KeyError(f"unknown lookup backend {backend!r}; available: {', '.join(sorted(BACKENDS))}") from None
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError as err:
        raise ImportError(
            f"embedding.backend={backend} needs torchrec and fbgemm-gpu-cpu ({err}); scripts/setup.sh installs them"
        ) from err
    return cls(specs, num_fields, sparse)
