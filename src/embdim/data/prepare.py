"""The prepare pipeline: read -> split -> fit encoder on train -> encode all splits -> cache.

::

    from embdim.data.prepare import PreprocessConfig, prepare

    data = prepare(reader, PreprocessConfig(min_count=10, numeric="discretize"), "cache", "criteo")
    data.splits["train"].ids        # np.memmap int32 [N, F]
    data.schema.fields[0].counts    # int64 training counts per id, [0] = OOV

When ``cache_root/<name>-<key16>/`` already holds a complete cache for the same inputs, it is opened
without reading any source file. The key covers: the reader class and its options except those
that name source files (``SOURCE_OPTIONS``), each source file under its role (split or side table)
by resolved path, size, ``mtime_ns`` and a hash of its head and tail (see
:func:`embdim.data.cache.file_fingerprint`), and the :class:`PreprocessConfig`. So a relative or
absolute path, a symlink, or another spelling of the data root finds the same cache, and a changed
file does not. For a :class:`RawData` handed over directly (no reader), its ``sources`` are
fingerprinted; when it has none (built in memory), a hash of its content is used instead.
"""

from __future__ import annotations

import hashlib
import math
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import Field, field_validator
from tqdm.auto import tqdm

from embdim.data.cache import (
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
from embdim.data.readers._common import SplitFileReader
from embdim.data.readers.base import ChunkedData, NotStreamable, Reader
from embdim.data.split import DEFAULT_RATIOS, DEFAULT_VALID_RATIO, SPLIT_NAMES, require_rows, split_frames
from embdim.data.stream import DEFAULT_CHUNK_ROWS, prepare_streaming
from embdim.errors import ConfigError, shorten
from embdim.options import Options

LABEL_SKIP_REASON = "label missing or not 0/1 (prepare)"
"""Key in ``schema.skipped`` for rows dropped here because their label is null or not 0/1."""
_FIXED_STEPS = 4  # read, split, fit, write (plus one encode step per split)
STREAM_MIN_BYTES = 256 << 20
"""Sources larger than this are streamed by default (when their reader can)."""
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
"""Allowed dataset names (they become a folder name)."""
_CONTENT_HASH_SEED = 0


class SplitConfig(Options):
    """How rows are divided into train / valid / test (see :mod:`embdim.data.split`)."""

    ratios: list[float] = Field(
        default=list(DEFAULT_RATIOS),
        min_length=len(SPLIT_NAMES),
        max_length=len(SPLIT_NAMES),
        description="train/valid/test weights when the reader gives one pool of rows (normalised; train, valid > 0).",
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
        # valid > 0 as well: the checkpoint is selected on the validation split, which needs rows
        if not all(math.isfinite(r) and r >= 0 for r in v) or not math.isfinite(sum(v)) or v[0] <= 0 or v[1] <= 0:
            raise ValueError(
                f"ratios must be finite and non-negative with train > 0 and valid > 0 "
                f"(selection on validation needs rows), got {v}"
            )
        return v


class PreprocessConfig(Options):
    """Preprocessing options; every field is part of the cache key."""

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
    """What determines the cache content, as a JSON-able dict (hashed by :func:`cache_key`).

    A reader's path options are left out of ``reader_options``: the files they name are keyed by
    fingerprint under ``sources`` instead, as ``{"role", "path", ...}`` in the reader's order (splits
    in train, valid, test order), so the spelling of a path never changes the key but the files and
    the role each one plays do.
    """
    payload: dict = {"preprocess": config.model_dump(mode="json")}
    if isinstance(source, Reader):
        path_options = getattr(type(source.options), "SOURCE_OPTIONS", frozenset())
        payload["reader"] = f"{type(source).__module__}.{type(source).__qualname__}"
        payload["reader_options"] = source.options.model_dump(mode="json", exclude=set(path_options))
        payload["sources"] = [{"role": role, **file_fingerprint(p)} for role, p in source.source_files().items()]
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


def _split_sources(source: RawData | Reader) -> dict[str, str]:
    """Split name -> the file it was read from, where the source says (for error messages)."""
    if isinstance(source, SplitFileReader):
        return {name: source.display(path) for name, path in source.split_paths().items()}
    return {}


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


def _chunked(source: RawData | Reader, streaming: bool | None, chunk_rows: int, min_bytes: int) -> ChunkedData | None:
    """The source in chunks when it is to be streamed, else ``None`` (see :func:`prepare`)."""
    if streaming is False or not isinstance(source, Reader):
        return None
    try:
        chunked, why = source.chunked(chunk_rows), "its options ask for a whole read"
    except NotStreamable as err:
        chunked, why = None, str(err)
    if chunked is None:
        if streaming:
            raise ConfigError(f"the {type(source).__name__} cannot stream these files ({why}); prepare them in memory")
        return None
    if streaming is None and sum(p.stat().st_size for p in chunked.files if p.is_file()) < min_bytes:
        return None
    return chunked


def _meta(name: str, key: str, categorical: list[str], numeric: list[str], payload: dict) -> dict:
    return {
        "name": name,
        "cache_key": key,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "categorical": list(categorical),
        "numeric": list(numeric),
        **payload,
    }


def prepare(
    source: RawData | Reader,
    config: PreprocessConfig | dict | None,
    cache_root: str | Path,
    name: str,
    progress: bool = True,
    force: bool = False,
    streaming: bool | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    stream_min_bytes: int = STREAM_MIN_BYTES,
) -> PreparedData:
    """Encode a dataset into ``cache_root/<name>-<key16>/`` (or open it when it is already there).

    Args:
        source: a :class:`Reader` (read only on a cache miss) or an already read :class:`RawData`.
        config: :class:`PreprocessConfig` or a dict of its fields (``None`` = defaults).
        cache_root: folder that holds the cache folders.
        name: dataset name, the folder's prefix (letters, digits, ``_.+-``).
        progress: show a progress bar on stderr.
        force: rebuild even when a complete cache exists (the new one replaces it atomically).
        streaming: read the sources in chunks of ``chunk_rows`` rows (:mod:`embdim.data.stream`), in
            memory that does not grow with the rows; ``None``: when the reader can and its sources hold
            more than ``stream_min_bytes`` (and falls back to memory where a file turns out not to be
            streamable, e.g. quoted CSV). Both ways write the same cache.
        chunk_rows: rows per chunk when streaming.
        stream_min_bytes: the source size from which ``streaming=None`` streams.

    Returns:
        :class:`PreparedData` with memory-mapped arrays; ``schema.skipped`` holds the reader's
        skipped rows plus rows dropped here for a bad label; ``schema.meta`` records the key inputs;
        ``warnings`` lists what makes its metrics doubtful (see :func:`embdim.data.split.split_warnings`).

    Raises:
        DataError: a missing source (naming the data root), bad input (naming file and line), or a
            split that leaves train or valid without rows. Nothing is left in ``cache_root`` then.
        ConfigError: a dataset name that cannot be a folder name.
    """
    cfg = PreprocessConfig.model_validate(config or {}) if not isinstance(config, PreprocessConfig) else config
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"dataset.name: {shorten(repr(name))} must match {NAME_PATTERN.pattern} (it becomes a folder name)"
        )
    if isinstance(source, Reader):
        source.check_sources()  # before fingerprinting them, to name the data root when one is missing
    payload = key_payload(source, cfg)
    key = cache_key(payload)
    final = cache_dir_for(cache_root, name, key)
    clean_stale_temps(cache_root)
    if not force and is_complete(final):
        return load_prepared(final)
    chunked = _chunked(source, streaming, chunk_rows, stream_min_bytes)
    if chunked is not None:
        try:
            with CacheWriter(final) as writer:
                split = cfg.split
                encoder, rows = prepare_streaming(
                    chunked,
                    cfg.make_encoder(),
                    writer,
                    (split.ratios, split.seed, split.valid_ratio),
                    _split_sources(source),
                    progress,
                )
                meta = _meta(name, key, chunked.categorical, chunked.numeric, payload)
                schema = encoder.schema(rows=rows, skipped={}, meta=meta)
                writer.write_encoder(encoder)
                writer.write_schema(schema)
            return load_prepared(final)
        except NotStreamable as err:
            if streaming:
                raise ConfigError(f"{err}: this source cannot be streamed; prepare it in memory") from None

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
        given = {split: df.height for split, df in frames.items()}
        frames = split_frames(frames, cfg.split.ratios, cfg.split.seed, cfg.split.valid_ratio)
        sizes = {split: df.height for split, df in frames.items()}
        require_rows(sizes, given, cfg.split.ratios, cfg.split.valid_ratio, _split_sources(source))
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
            meta = _meta(name, key, raw.categorical, raw.numeric, payload)
            schema = encoder.schema(rows=rows, skipped=skipped, meta=meta)
            schema.label = raw.label
            writer.write_encoder(encoder)
            writer.write_schema(schema)
        bar.update()
    return load_prepared(final)
