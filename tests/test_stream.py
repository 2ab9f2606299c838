"""Streaming prepare writes exactly the cache the in-memory prepare writes, across chunk boundaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embdim.data.cache import COMPLETE_MARKER, TEMP_PREFIX, is_complete
from embdim.data.prepare import PreprocessConfig, prepare
from embdim.data.readers.criteo import CriteoOptions, CriteoReader
from embdim.data.synthetic import write_criteo_text

CHUNK_ROWS = [7, 64]  # a few rows per chunk: every chunk boundary is crossed many times


def _same_cache(a: Path, b: Path) -> None:
    files_a = json.loads((a / COMPLETE_MARKER).read_text())["files"]
    files_b = json.loads((b / COMPLETE_MARKER).read_text())["files"]
    assert files_a.keys() == files_b.keys()
    for rel in files_a:
        if rel.endswith(".npy"):
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel  # byte-identical arrays
    schema_a, schema_b = (json.loads((d / "schema.json").read_text()) for d in (a, b))
    schema_a["meta"].pop("created"), schema_b["meta"].pop("created")
    assert schema_a == schema_b
    assert json.loads((a / "encoder.json").read_text()) == json.loads((b / "encoder.json").read_text())
    import polars as pl

    assert pl.read_parquet(a / "vocab.parquet").equals(pl.read_parquet(b / "vocab.parquet"))


@pytest.fixture(scope="module")
def criteo_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("criteo")
    files = {}
    for name, rows, seed in (("pool", 900, 0), ("train", 700, 1), ("valid", 150, 2), ("test", 140, 3)):
        files[name] = write_criteo_text(root / f"{name}.txt.gz", rows, seed=seed, compress=True)
    return files


LAYOUTS = {
    "pool": lambda f: {"path": str(f["pool"])},
    "given": lambda f: {"files": {"train": str(f["train"]), "valid": str(f["valid"]), "test": str(f["test"])}},
    "carved": lambda f: {"files": {"train": str(f["train"]), "test": str(f["test"])}},
    "nrows": lambda f: {"path": str(f["pool"]), "nrows": 333},
}


SAMPLE = [(layout, "discretize", 7) for layout in LAYOUTS] + [("pool", "dense", 7), ("given", "both", 64)]
EVERY = [
    (layout, numeric, rows) for layout in LAYOUTS for numeric in ("discretize", "dense", "both") for rows in CHUNK_ROWS
]


@pytest.mark.parametrize(("layout", "numeric", "chunk_rows"), SAMPLE)
def test_streaming_and_in_memory_prepare_write_identical_caches(criteo_files, tmp_path, layout, numeric, chunk_rows):
    _check_identical(criteo_files, tmp_path, layout, numeric, chunk_rows)


@pytest.mark.slow
@pytest.mark.parametrize(("layout", "numeric", "chunk_rows"), EVERY)
def test_every_layout_mode_and_chunk_size_streams_to_the_identical_cache(
    criteo_files, tmp_path, layout, numeric, chunk_rows
):
    _check_identical(criteo_files, tmp_path, layout, numeric, chunk_rows)


def _check_identical(criteo_files, tmp_path, layout, numeric, chunk_rows):
    reader = CriteoReader(CriteoOptions(**LAYOUTS[layout](criteo_files)), tmp_path)
    cfg = PreprocessConfig(min_count=2, numeric=numeric, dense_transform="log1p", split={"seed": 5})
    memory = prepare(reader, cfg, tmp_path / "a", "c", progress=False, streaming=False)
    streamed = prepare(reader, cfg, tmp_path / "b", "c", progress=False, streaming=True, chunk_rows=chunk_rows)
    _same_cache(memory.cache_dir, streamed.cache_dir)
    assert streamed.schema.rows == memory.schema.rows
    assert streamed.encoder().to_dict() == memory.encoder().to_dict()  # the encoder loads back alike too


def test_a_bad_line_in_a_later_chunk_is_named_and_leaves_no_cache(tmp_path):
    path = write_criteo_text(tmp_path / "c.txt", 200, seed=0, compress=False)
    lines = path.read_text().splitlines(keepends=True)
    lines[150] = "2\t" + lines[150].split("\t", 1)[1]  # label 2 on line 151
    path.write_text("".join(lines))
    reader = CriteoReader(CriteoOptions(path=str(path)), tmp_path)
    from embdim.data.raw import DataError

    with pytest.raises(DataError, match=r"c\.txt line 151: label '2'"):
        prepare(reader, PreprocessConfig(), tmp_path / "cache", "c", progress=False, streaming=True, chunk_rows=16)
    assert not list((tmp_path / "cache").iterdir())


def test_an_interrupted_streaming_prepare_leaves_no_usable_cache(tmp_path, monkeypatch):
    path = write_criteo_text(tmp_path / "c.txt", 300, seed=0, compress=False)
    reader = CriteoReader(CriteoOptions(path=str(path)), tmp_path)
    import embdim.data.stream as stream

    real = stream._encode
    calls = {"n": 0}

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated kill")
        return real(*args)

    monkeypatch.setattr(stream, "_encode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(reader, PreprocessConfig(), tmp_path / "cache", "c", progress=False, streaming=True, chunk_rows=50)
    left = list((tmp_path / "cache").iterdir())
    assert not [p for p in left if is_complete(p)] and not [p for p in left if not p.name.startswith(TEMP_PREFIX)]
    monkeypatch.setattr(stream, "_encode", real)
    data = prepare(reader, PreprocessConfig(), tmp_path / "cache", "c", progress=False, streaming=True)
    assert is_complete(data.cache_dir)
