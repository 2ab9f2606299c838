"""embdim: learn how large each embedding of a CTR model needs to be, then export a slimmer model.

Public API::

    from embdim import EmbeddingLayer, FieldInfo, list_searchers, list_models
    bundle = embdim.load("runs/quickstart/model")      # a trained model that scores raw rows
    rec = embdim.load_run("runs/quickstart")           # a run's checkpoint as a model
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from embdim.data.schema import DatasetSchema, FieldInfo
    from embdim.embedding import EmbeddingLayer, create_searcher
    from embdim.plan import EmbeddingPlan
    from embdim.recommender import Recommender, build_recommender, export_model, load_model
    from embdim.serve import Bundle, load
    from embdim.slim import SlimEmbedding
    from embdim.train.run import load_run

# The public names load their modules when first used, so that commands which never touch torch
# (prepare, inspect, list, --help) do not pay for importing it.
_PUBLIC = {
    "DatasetSchema": "embdim.data.schema",
    "FieldInfo": "embdim.data.schema",
    "EmbeddingLayer": "embdim.embedding",
    "create_searcher": "embdim.embedding",
    "EmbeddingPlan": "embdim.plan",
    "Recommender": "embdim.recommender",
    "build_recommender": "embdim.recommender",
    "export_model": "embdim.recommender",
    "load_model": "embdim.recommender",
    "SlimEmbedding": "embdim.slim",
    "Bundle": "embdim.serve",
    "load": "embdim.serve",
    "load_run": "embdim.train.run",
}


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'embdim' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # looked up once
    return value


__version__ = "0.1.0"


def list_searchers() -> list[str]:
    """Names of the registered embedding-size methods."""
    from embdim.plugins import SEARCHERS

    return SEARCHERS.names()


def list_models() -> list[str]:
    """Names of the registered CTR models."""
    from embdim.plugins import MODELS

    return MODELS.names()


def list_readers() -> list[str]:
    """Names of the registered dataset readers."""
    from embdim.plugins import READERS

    return READERS.names()


__all__ = [
    "Bundle",
    "DatasetSchema",
    "EmbeddingLayer",
    "EmbeddingPlan",
    "FieldInfo",
    "Recommender",
    "SlimEmbedding",
    "build_recommender",
    "create_searcher",
    "export_model",
    "list_models",
    "list_readers",
    "list_searchers",
    "load",
    "load_model",
    "load_run",
]
