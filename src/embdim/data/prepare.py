"""The prepare pipeline: read -> split -> fit encoder on train -> encode all splits -> cache.

::

    from embdim.data.prepare import PreprocessConfig, prepare

    data = prepare(reader, PreprocessConfig(min_count=10, numeric="discretize"), "cache", "criteo")
    data.splits["train"].ids        # np.memmap int32 [N, F]
    data.schema.fields[0].counts    # int64 training counts per id, [0] = OOV

When ``cache_root/<name>-<key16>/`` already holds a complete cache for the same inputs, it is opened
without reading any source file. The key covers: the reader class and its options, each source
file's resolved path, size and ``mtime_ns`` (see :func:`embdim.data.cache.file_fingerprint`), and the
:class:`PreprocessConfig`. For a :class:`RawData` handed over directly (no reader), its ``sources``
are fingerprinted; when it has none (built in memory), a hash of its content is used instead.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm.auto import tqdm

from embdim.data.cache import (
    ENCODER_FILE,
    SCHEMA_FILE,
    CacheWriter,
    PreparedData,
    SplitArrays,
    cache_dir_for,
    cache_key,
    clean_stale_temps,
    file_fingerprint,
    is_complete,
    load_prepared,
)
from embdim.data.encoder import DenseTransform, Encoder, NumericMode
from embdim.data.raw import DataError, RawData
from embdim.data.readers.base import Reader
from embdim.data.split import DEFAULT_RATIOS, DEFAULT_VALID_RATIO, SPLIT_NAMES, split_frames

LABEL_SKIP_REASON = "label missing or not 0/1 (prepare)"
"""Key in ``schema.skipped`` for rows dropped here because their label is null or not 0/1."""
_FIXED_STEPS = 4  # read, split, fit, write (plus one encode step per split)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
"""Allowed dataset names (they become a folder name)."""
_CONTENT_HASH_SEED = 0


class SplitConfig(BaseModel):
    """How rows are divided into train / valid / test (see :mod:`embdim.data.split`)."""

    model_config = ConfigDict(extra="forbid")

    ratios: list[float] = Field(
        default=list(DEFAULT_RATIOS),
        min_length=len(SPLIT_NAMES),
        max_length=len(SPLIT_NAMES),
        description="train/valid/test weights when the reader gives one pool of rows (normalised).",
    )
    seed: int = Field(default=0, description="seed of the shuffle; the same seed gives the same split.")
    valid_ratio: float = Field(
        default=DEFAULT_VALID_RATIO,
        ge=0.0,
        lt=1.0,
        description="share of the given train file carved out as valid when no valid file is given.",
    )

    @field_validator("ratios")
    @classmethod
    def _check_ratios(cls, v: list[float]) -> list[float]:
        if any(r < 0 for r in v) or v[0] <= 0:
            raise ValueError(f"ratios must be non-negative with train > 0, got {v}")
        return v


class PreprocessConfig(BaseModel):
    """Preprocessing options; every field is part of the cache key."""

    model_config = ConfigDict(extra="forbid")

    min_count: int = Field(
        default=1, ge=1, description="values seen fewer times in training share the OOV id 0 of their field."
    )
    numeric: NumericMode = Field(
        default="dense",
        description="numeric columns as floats ('dense'), as Criteo log buckets ('discretize'), or 'both'.",
    )
    dense_transform: DenseTransform = Field(
        default="none",
        description="'log1p' maps x -> log(1 + max(x, 0)) (use for count features like Criteo's).",
    )
    split: SplitConfig = Field(default_factory=SplitConfig, description="train/valid/test split.")

    def make_encoder(self) -> Encoder:
        """An unfitted :class:`Encoder` with these options."""
        return Encoder(min_count=self.min_count, numeric=self.numeric, dense_transform=self.dense_transform)


def _content_hash(raw: RawData) -> str:
    """SHA-256 of the frames' row hashes, columns and dtypes (for RawData built in memory)."""
    h = hashlib.sha256(pl.__version__.encode())
    for name in sorted(raw.splits):
        df = raw.splits[name]
        h.update(f"{name}:{df.columns}:{df.dtypes}:{df.height}".encode())
        if df.height:
            h.update(df.hash_rows(seed=_CONTENT_HASH_SEED).to_numpy().tobytes())
    return h.hexdigest()


def key_payload(source: RawData | Reader, config: PreprocessConfig) -> dict:
    """What determines the cache content, as a JSON-able dict (hashed by :func:`cache_key`)."""
    payload: dict = {"preprocess": config.model_dump(mode="json")}
    if isinstance(source, Reader):
        payload["reader"] = f"{type(source).__module__}.{type(source).__qualname__}"
        payload["reader_options"] = source.options.model_dump(mode="json")
        payload["sources"] = [file_fingerprint(p) for p in source.sources()]
    elif source.sources:
        payload["sources"] = [file_fingerprint(p) for p in source.sources]
    else:
        payload["content"] = _content_hash(source)
    return payload


def _validate_raw(raw: RawData) -> None:
    if not raw.splits:
        raise DataError("the reader returned no rows (RawData.splits is empty)")
    needed = [*raw.categorical, *raw.numeric, raw.label]
    for split, df in raw.splits.items():
        missing = [c for c in needed if c not in df.columns]
        if missing:
            raise DataError(f"split {split!r} lacks columns {missing} (has {df.columns})")


def _drop_bad_labels(raw: RawData) -> tuple[dict[str, pl.DataFrame], int]:
    """Frames with the label cast to Float32 and rows whose label is null or not 0/1 removed."""
    label = pl.col(raw.label).cast(pl.Float32)
    good = label.is_in([0.0, 1.0]).fill_null(False)
    frames, dropped = {}, 0
    for split, df in raw.splits.items():
        kept = df.with_columns(label).filter(good)
        dropped += df.height - kept.height
        frames[split] = kept
    return frames, dropped


def prepare(
    source: RawData | Reader,
    config: PreprocessConfig | dict | None,
    cache_root: str | Path,
    name: str,
    progress: bool = True,
    force: bool = False,
) -> PreparedData:
    """Encode a dataset into ``cache_root/<name>-<key16>/`` (or open it when it is already there).

    Args:
        source: a :class:`Reader` (read only on a cache miss) or an already read :class:`RawData`.
        config: :class:`PreprocessConfig` or a dict of its fields (``None`` = defaults).
        cache_root: folder that holds the cache folders.
        name: dataset name, the folder's prefix (letters, digits, ``_.+-``).
        progress: show a progress bar on stderr.
        force: rebuild even when a complete cache exists (the new one replaces it atomically).

    Returns:
        :class:`PreparedData` with memory-mapped arrays; ``schema.skipped`` holds the reader's
        skipped rows plus rows dropped here for a bad label; ``schema.meta`` records the key inputs.
    """
    cfg = PreprocessConfig.model_validate(config or {}) if not isinstance(config, PreprocessConfig) else config
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"dataset name {name!r} must match {NAME_PATTERN.pattern}")
    payload = key_payload(source, cfg)
    key = cache_key(payload)
    final = cache_dir_for(cache_root, name, key)
    clean_stale_temps(cache_root)
    if not force and is_complete(final):
        return load_prepared(final)

    with tqdm(total=len(SPLIT_NAMES) + _FIXED_STEPS, desc=f"prepare {name}", unit="step", disable=not progress) as bar:
        bar.set_postfix_str("read")
        raw = source.read() if isinstance(source, Reader) else source
        _validate_raw(raw)
        frames, bad_labels = _drop_bad_labels(raw)
        skipped = dict(raw.skipped)
        if bad_labels:
            skipped[LABEL_SKIP_REASON] = skipped.get(LABEL_SKIP_REASON, 0) + bad_labels
        bar.update()

        bar.set_postfix_str("split")
        frames = split_frames(frames, cfg.split.ratios, cfg.split.seed, cfg.split.valid_ratio)
        bar.total = len(frames) + _FIXED_STEPS
        bar.update()

        bar.set_postfix_str("fit")
        encoder = cfg.make_encoder().fit(frames["train"], raw.categorical, raw.numeric)
        bar.update()

        rows: dict[str, int] = {}
        with CacheWriter(final) as writer:
            for split in list(frames):
                bar.set_postfix_str(f"encode {split}")
                df = frames.pop(split)  # free each frame once encoded
                ids, dense = encoder.transform(df)
                labels = df.get_column(raw.label).to_numpy().astype(np.float32, copy=False)
                writer.write_split(split, SplitArrays(ids, dense, labels))
                rows[split] = df.height
                del df, ids, dense, labels
                bar.update()
            bar.set_postfix_str("write")
            meta = {
                "name": name,
                "cache_key": key,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "categorical": list(raw.categorical),
                "numeric": list(raw.numeric),
                **payload,
            }
            schema = encoder.schema(rows=rows, skipped=skipped, meta=meta)
            schema.label = raw.label
            writer.write_json(ENCODER_FILE, encoder.to_dict())
            writer.write_json(SCHEMA_FILE, schema.to_dict())
        bar.update()
    return load_prepared(final)
