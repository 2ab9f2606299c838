"""embdim: learn how large each embedding of a CTR model needs to be, then export a slimmer model.

Public API::

    from embdim import EmbeddingLayer, FieldInfo, list_searchers, list_models
"""

from embdim.data.schema import DatasetSchema, FieldInfo
from embdim.embedding import EmbeddingLayer, create_searcher
from embdim.plan import EmbeddingPlan
from embdim.recommender import Recommender, build_recommender, export_model, load_model
from embdim.registry import MODELS, READERS, SEARCHERS
from embdim.slim import SlimEmbedding

__version__ = "0.1.0"


def list_searchers() -> list[str]:
    """Names of the registered embedding-size methods."""
    return SEARCHERS.names()


def list_models() -> list[str]:
    """Names of the registered CTR models."""
    return MODELS.names()


def list_readers() -> list[str]:
    """Names of the registered dataset readers."""
    return READERS.names()


__all__ = [
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
    "load_model",
]
