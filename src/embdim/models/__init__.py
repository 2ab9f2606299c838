"""CTR models on top of an embedding layer; importing this package registers them in ``MODELS``."""

from embdim.models import autoint, deepfm, dlrm, fm  # noqa: F401  (register the built-in models)
from embdim.models.base import CTRModel, ModelConfig

__all__ = ["CTRModel", "ModelConfig"]
