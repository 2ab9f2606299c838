"""Atomic file writes and resumable checkpoints (torch tensors and plain types only)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` so that readers see the old file or the new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False))


def save_torch(path: Path, obj: Any) -> None:
    """``torch.save`` through a temporary file and a rename (a kill mid-write leaves the old file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_torch(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def save_weights(path: Path, module: torch.nn.Module) -> None:
    """A module's state dict as safetensors (atomically)."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}, str(tmp))
    os.replace(tmp, path)


def load_weights(path: Path, module: torch.nn.Module) -> None:
    module.load_state_dict(load_file(str(path)))


def warm_start(source: Path, module: torch.nn.Module) -> list[str]:
    """Load the weights of a finished or running run (its ``best.safetensors``) or of a safetensors file.

    Keys the source lacks keep their initial values (e.g. a searcher's own layers on top of a trained
    ``full`` model); a source key the module lacks, or one of another shape, is an error naming the key.
    Returns the keys left as initialised.
    """
    path = source / "best.safetensors" if source.is_dir() else source
    if not path.is_file():
        raise FileNotFoundError(f"train.init_from: no weights at {path} (expected a run folder or a .safetensors file)")
    weights = load_file(str(path))
    own = module.state_dict()
    for key, value in weights.items():
        if key not in own:
            raise ValueError(f"train.init_from: {path} has {key!r}, which this model does not have")
        if own[key].shape != value.shape:
            raise ValueError(
                f"train.init_from: {key!r} has shape {tuple(value.shape)} in {path}, {tuple(own[key].shape)} here"
            )
    module.load_state_dict(weights, strict=False)
    return sorted(set(own) - set(weights))
