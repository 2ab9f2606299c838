"""Cache: keyed by sources + config, loaded without reading, written atomically, memory-mapped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from embdim.data import cache
from embdim.data.cache import (
    COMPLETE_MARKER,
    TEMP_PREFIX,
    CacheWriter,
    SplitArrays,
    clean_stale_temps,
    is_complete,
    load_prepared,
)
from embdim.data.prepare import PreprocessConfig, prepare
from embdim.data.raw import RawData
from embdim.data.readers.base import Reader, ReaderOptions

NAME = "tiny"
ROWS = 300


class CountingReader(Reader):
    """Reads ``file`` (CSV: c1, c2, x, label) and counts its calls in ``reads``."""

    class Options(ReaderOptions):
        file: str

    reads: list[int] = []  # noqa: RUF012 - shared on purpose: counts calls across instances

    def sources(self) -> list[Path]:
        return [self.path(self.options.file)]

    def read(self) -> RawData:
        type(self).reads.append(1)
        df = pl.read_csv(self.sources()[0], schema_overrides={"c1": pl.Utf8, "c2": pl.Utf8})
        df = df.with_columns(pl.col("x").cast(pl.Float64), pl.col("label").cast(pl.Float32))
        return RawData({"all": df}, ["c1", "c2"], ["x"], skipped={"bad line": 2}, sources=self.sources())


@pytest.fixture
def reader(tmp_path: Path) -> CountingReader:
    rng = np.random.default_rng(1)
    df = pl.DataFrame(
        {
            "c1": [f"a{i}" for i in rng.integers(0, 20, ROWS)],
            "c2": [None if i == 0 else f"b{i}" for i in rng.integers(0, 8, ROWS)],
            "x": rng.exponential(5.0, ROWS).round(),
            "label": rng.integers(0, 2, ROWS),
        }
    )
    (tmp_path / "data").mkdir()
    df.write_csv(tmp_path / "data" / "tiny.csv")
    CountingReader.reads.clear()
    return CountingReader(CountingReader.Options(file="tiny.csv"), tmp_path / "data")


def complete_folders(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.name.startswith(f"{NAME}-") and is_complete(p)] if root.is_dir() else []


def run(reader: Reader, root: Path, **config):
    return prepare(reader, PreprocessConfig(**config), root, NAME, progress=False)


def test_second_prepare_loads_from_cache_without_reading(reader, tmp_path):
    root = tmp_path / "cache"
    first = run(reader, root)
    assert len(CountingReader.reads) == 1
    second = run(reader, root)
    assert len(CountingReader.reads) == 1, "the cached dataset was read again"
    assert second.cache_dir == first.cache_dir
    assert second.cache_dir.name.startswith(f"{NAME}-") and len(second.cache_dir.name) == len(NAME) + 1 + 16
    for split in first.splits:
        np.testing.assert_array_equal(second[split].ids, first[split].ids)
    assert second.schema.to_dict() == first.schema.to_dict()
    assert second.schema.skipped == {"bad line": 2}


def test_loaded_arrays_are_memory_mapped(reader, tmp_path):
    run(reader, tmp_path / "cache")
    data = run(reader, tmp_path / "cache")
    assert set(data.splits) == {"train", "valid", "test"}
    assert sum(len(s) for s in data.splits.values()) == ROWS
    for arrays in data.splits.values():
        assert isinstance(arrays.ids, np.memmap) and arrays.ids.dtype == np.int32
        assert isinstance(arrays.dense, np.memmap) and arrays.dense.dtype == np.float32
        assert isinstance(arrays.labels, np.memmap) and arrays.labels.dtype == np.float32
        assert arrays.ids.shape == (len(arrays), 2) and arrays.dense.shape == (len(arrays), 1)
    assert data.schema.rows == {name: len(a) for name, a in data.splits.items()}
    # the stored encoder encodes like the cache: train ids re-derived from its counts
    assert data.encoder().schema().vocab_sizes == data.schema.vocab_sizes


def test_config_change_or_touched_source_gives_a_new_key(reader, tmp_path):
    root = tmp_path / "cache"
    base = run(reader, root).cache_dir
    other_config = run(reader, root, min_count=2).cache_dir
    assert other_config != base
    source = reader.sources()[0]
    st = source.stat()
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    touched = run(reader, root).cache_dir
    assert touched not in (base, other_config)
    assert len(CountingReader.reads) == 3
    assert len(complete_folders(root)) == 3


def test_write_failure_leaves_nothing_usable_and_next_prepare_succeeds(reader, tmp_path, monkeypatch):
    root = tmp_path / "cache"
    real_write_split = CacheWriter.write_split
    calls = []

    def fail_on_second(self, name, arrays):
        calls.append(name)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        real_write_split(self, name, arrays)

    monkeypatch.setattr(CacheWriter, "write_split", fail_on_second)
    with pytest.raises(OSError, match="simulated"):
        run(reader, root)
    assert complete_folders(root) == []
    assert list(root.iterdir()) == [], "the temporary folder should be removed on an exception"
    monkeypatch.undo()
    data = run(reader, root)
    assert complete_folders(root) == [data.cache_dir]


def test_reader_failure_creates_no_folder(reader, tmp_path, monkeypatch):
    def broken(self):
        raise ValueError("line 7: bad value")

    monkeypatch.setattr(CountingReader, "read", broken)
    with pytest.raises(ValueError, match="line 7"):
        run(reader, tmp_path / "cache")
    assert complete_folders(tmp_path / "cache") == []


def test_killed_prepare_leaves_only_an_ignored_temp_folder(tmp_path):
    """A hard kill mid-write (os._exit) leaves a temp folder that is never used and later removed."""
    root = tmp_path / "cache"
    script = textwrap.dedent(
        f"""
        import os, sys
        from embdim.data.cache import CacheWriter
        from embdim.data.prepare import prepare
        from embdim.data.synthetic import SyntheticReader, SyntheticSpec

        real = CacheWriter.write_split
        def die_after_first(self, name, arrays):
            real(self, name, arrays)
            os._exit(3)
        CacheWriter.write_split = die_after_first
        spec = SyntheticSpec(cardinalities=[5, 7], rows=200)
        prepare(SyntheticReader(spec), None, sys.argv[1], {NAME!r}, progress=False)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    leftovers = [p for p in root.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert len(leftovers) == 1 and complete_folders(root) == []

    from embdim.data.synthetic import SyntheticReader, SyntheticSpec

    data = prepare(SyntheticReader(SyntheticSpec(cardinalities=[5, 7], rows=200)), None, root, NAME, progress=False)
    assert complete_folders(root) == [data.cache_dir]
    assert not any(p.name.startswith(TEMP_PREFIX) for p in root.iterdir()), "dead writer's temp not cleaned"


def test_incomplete_folder_under_final_name_is_rebuilt(reader, tmp_path):
    root = tmp_path / "cache"
    folder = run(reader, root).cache_dir
    labels = folder / "train" / "labels.npy"
    labels.write_bytes(labels.read_bytes()[:-4])  # truncated after the fact
    assert not is_complete(folder)
    with pytest.raises(FileNotFoundError):
        load_prepared(folder)
    data = run(reader, root)
    assert len(CountingReader.reads) == 2 and data.cache_dir == folder and is_complete(folder)
    (folder / COMPLETE_MARKER).unlink()
    run(reader, root)
    assert len(CountingReader.reads) == 3 and is_complete(folder)


def test_concurrent_commit_keeps_the_first_copy(tmp_path):
    final = tmp_path / "cache" / f"{NAME}-0123456789abcdef"
    arrays = SplitArrays(np.zeros((3, 2), np.int32), np.zeros((3, 0), np.float32), np.ones(3, np.float32))
    schema = {"fields": [], "rows": {"train": 3}}
    first, second = CacheWriter(final), CacheWriter(final)
    with first, second:
        for writer, label in ((first, "first"), (second, "second")):
            writer.write_split("train", arrays)
            writer.write_json("schema.json", {**schema, "meta": {"who": label}})
        first.commit()
    assert second.committed and is_complete(final)
    assert json.loads((final / "schema.json").read_text())["meta"]["who"] == "first"
    assert [p.name for p in final.parent.iterdir()] == [final.name]


def test_clean_stale_temps_spares_live_writers(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    with CacheWriter(root / f"{NAME}-0123456789abcdef") as writer:
        writer.write_json("schema.json", {"fields": []})
        assert clean_stale_temps(root) == []  # our own process is alive
        assert writer.tmp_dir.is_dir()
        monkeypatch.setattr(cache, "_pid_alive", lambda pid: False)
        assert clean_stale_temps(root) == [writer.tmp_dir]
        writer.abort()
