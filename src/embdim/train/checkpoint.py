"""Atomic file writes and resumable checkpoints (torch tensors and plain types only)."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from embdim.errors import ConfigError, UnreadableFile, shorten
from embdim.tensorfile import write_tensors


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


def finite_or_null(data: Any) -> Any:
    """``data`` with every NaN or infinite float replaced by ``None`` (JSON has no NaN)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_or_null(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite_or_null(v) for v in data]
    return data


def strict_json(data: Any, **kwargs: Any) -> str:
    """Standard JSON: non-finite floats become ``null``."""
    return json.dumps(finite_or_null(data), allow_nan=False, **kwargs)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, strict_json(data, indent=2, sort_keys=False))


TEMP_SUFFIX = ".tmp"  # temporary files are ".<name>.tmp" next to their target


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMP_SUFFIX}")


def _replace_through_temp(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` a temporary file, then rename it over ``path``; the temporary is removed on any failure
    (a full disk leaves the old file and nothing else)."""
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_temp_files(folder: Path) -> None:
    """Temporaries a killed process left behind in ``folder`` (never read: the renamed files are whole)."""
    for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)


LOW_DISK_BYTES = 1 << 20  # a failed write with less free space than this was the disk filling up


def _torch_save(obj: Any, path: Path) -> None:
    """``torch.save``, whose writer reports a full disk as a ``RuntimeError``: raised as the ``OSError``
    it is (``ENOSPC`` when the disk is nearly full), naming the file."""
    try:
        torch.save(obj, path)
    except RuntimeError as err:
        full = shutil.disk_usage(path.parent).free < LOW_DISK_BYTES
        code = errno.ENOSPC if full else errno.EIO
        raise OSError(code, os.strerror(code) if full else f"write failed ({shorten(str(err))})", str(path)) from err


def save_torch(path: Path, obj: Any) -> None:
    """``torch.save`` through a temporary file and a rename (a kill mid-write leaves the old file)."""
    _replace_through_temp(path, lambda tmp: _torch_save(obj, tmp))


def load_torch(path: Path) -> Any:
    """A checkpoint written by :func:`save_torch` (tensors and plain types only: no code runs)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, empty, garbage, or not a checkpoint at all
        raise UnreadableFile(f"{path}: cannot be read ({type(err).__name__}: {shorten(str(err))})") from None


def save_weights(path: Path, module: torch.nn.Module) -> None:
    """A module's state dict as safetensors (atomically), written from the weights' own memory."""
    save_tensors(path, module.state_dict())


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Named tensors as safetensors (atomically), written from their own memory."""
    _replace_through_temp(path, lambda tmp: write_tensors(tmp, tensors))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a damaged file is an :class:`UnreadableFile` naming it."""
    try:
        return load_file(str(path))
    except Exception as err:
        raise UnreadableFile(f"{path}: cannot be read ({type(err).__name__}: {shorten(str(err))})") from None


def load_weights(path: Path, module: torch.nn.Module) -> None:
    module.load_state_dict(read_weights(path))


def init_weights_path(source: Path) -> Path:
    """The weights ``train.init_from`` names: a run folder's ``best.safetensors`` or a ``.safetensors`` file;
    a :class:`ConfigError` when there are none (checked before any data is prepared)."""
    source = Path(source)
    path = source / "best.safetensors" if source.is_dir() else source
    if not path.is_file():
        raise ConfigError(f"train.init_from: no weights at {path} (expected a run folder or a .safetensors file)")
    try:
        with safe_open(str(path), framework="pt"):  # reads the header only
            pass
    except Exception as err:
        raise ConfigError(f"train.init_from: {path} is not a safetensors file ({shorten(str(err))})") from None
    return path


def warm_start(source: Path, module: torch.nn.Module) -> list[str]:
    """Load the weights of a finished or running run (its ``best.safetensors``) or of a safetensors file.

    Keys the source lacks keep their initial values (e.g. a searcher's own layers on top of a trained
    ``full`` model); a source key the module lacks, or one of another shape, is an error naming the key.
    Returns the keys left as initialised.
    """
    path = init_weights_path(source)
    try:
        weights = read_weights(path)
    except UnreadableFile as err:
        raise ConfigError(f"train.init_from: {err}") from None
    own = module.state_dict()
    for key, value in weights.items():
        if key not in own:
            raise ConfigError(f"train.init_from: {path} has {key!r}, which this model does not have")
        if own[key].shape != value.shape:
            raise ConfigError(
                f"train.init_from: {key!r} has shape {tuple(value.shape)} in {path}, {tuple(own[key].shape)} here"
            )
    module.load_state_dict(weights, strict=False)
    return sorted(set(own) - set(weights))
