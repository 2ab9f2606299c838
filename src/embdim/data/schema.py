"""What a prepared dataset looks like: fields, vocabularies, training counts."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class FieldInfo:
    """One categorical field after encoding.

    Ids run from 0 to ``vocab_size - 1``. Id 0 is the field's OOV id (values unseen in training or
    rarer than ``min_count``); ids 1.. are the kept values ordered by descending training count
    (ties by value), so an id's rank is its frequency rank.

    Attributes:
        name: column name.
        vocab_size: number of ids, OOV included.
        counts: int64 [vocab_size], training-split occurrences of each id (``counts[0]`` counts
            the training rows that fell into OOV). ``None`` when unknown (e.g. a model built for
            serving only).
    """

    name: str
    vocab_size: int
    counts: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.counts is not None:
            self.counts = np.asarray(self.counts, dtype=np.int64)
            if self.counts.shape != (self.vocab_size,):
                raise ValueError(
                    f"field {self.name!r}: counts has shape {self.counts.shape}, expected ({self.vocab_size},)"
                )


@dataclass
class DatasetSchema:
    """Fields of a prepared dataset, stored as ``schema.json`` in its cache folder.

    Attributes:
        fields: categorical fields in column order of the ids array ``[N, F]``.
        dense_names: numeric features kept as floats, column order of the dense array ``[N, Dn]``.
        label: name of the label column (0/1).
        rows: rows per split, e.g. ``{"train": 7200, "valid": 409, "test": 391}``.
        skipped: rows dropped on purpose, by reason (reported, never silent).
        meta: anything else worth keeping (reader, source files, preprocessing config).
    """

    fields: list[FieldInfo]
    dense_names: list[str] = field(default_factory=list)
    label: str = "label"
    rows: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    @property
    def num_dense(self) -> int:
        return len(self.dense_names)

    @property
    def vocab_sizes(self) -> list[int]:
        return [f.vocab_size for f in self.fields]

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def to_dict(self, counts: bool = True) -> dict:
        """JSON-able; ``counts=False`` leaves the training counts out (they are stored as an array)."""
        out = asdict(self)
        out["fields"] = [
            {
                "name": f.name,
                "vocab_size": f.vocab_size,
                "counts": None if f.counts is None or not counts else f.counts.tolist(),
            }
            for f in self.fields
        ]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> DatasetSchema:
        data = dict(data)
        data["fields"] = [
            FieldInfo(f["name"], f["vocab_size"], None if f["counts"] is None else np.asarray(f["counts"]))
            for f in data["fields"]
        ]
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> DatasetSchema:
        return cls.from_dict(json.loads(Path(path).read_text()))
