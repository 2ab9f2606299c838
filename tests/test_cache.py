"""Cache: keyed by source files (not their spelling) + config, read without the sources, written atomically."""

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
    PreparedData,
    SplitArrays,
    cache_key,
    clean_stale_temps,
    is_complete,
    load_prepared,
)
from embdim.data.prepare import PreprocessConfig, key_payload, prepare
from embdim.data.raw import RawData
from embdim.data.readers.base import Reader, ReaderOptions
from embdim.data.readers.table import TableOptions, TableReader
from embdim.plugins import READERS

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


# ---------------------------------------------------------------------- keys from files, not spellings
def write_table(path: Path, rows: int = ROWS, seed: int = 1) -> Path:
    """A CSV for the table reader: c1, c2 (categorical), x (numeric), label."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        {
            "c1": [f"a{i}" for i in rng.integers(0, 20, rows)],
            "c2": [f"b{i}" for i in rng.integers(0, 8, rows)],
            "x": rng.integers(0, 9, rows),
            "label": rng.integers(0, 2, rows),
        }
    ).write_csv(path)
    return path


def table(root: Path, **options) -> TableReader:
    return TableReader(TableOptions(categorical=["c1", "c2"], numeric=["x"], label="label", **options), root)


def key_of(reader: Reader) -> str:
    return cache_key(key_payload(reader, PreprocessConfig()))


def positives(data: PreparedData) -> float:
    return float(sum(data[split].labels.sum() for split in data.splits))


def forbid_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any read of a table source fail, so a prepare can only load its cache."""

    def read_again(self, *args):
        raise AssertionError("the source was read again although its cache exists")

    monkeypatch.setattr(TableReader, "read", read_again)
    monkeypatch.setattr(TableReader, "chunked", read_again)


def test_every_spelling_of_a_source_path_finds_one_cache(tmp_path, monkeypatch):
    data = tmp_path / "data"
    source = write_table(data / "a" / "t.csv")
    (data / "link.csv").symlink_to(source)
    (tmp_path / "data-link").symlink_to(data, target_is_directory=True)
    root = tmp_path / "cache"
    first = run(table(data, path="a/t.csv"), root)
    forbid_reading(monkeypatch)
    monkeypatch.chdir(tmp_path)
    spellings = {
        "absolute": table(data, path=str(source)),
        "dot and dot-dot": table(data, path="./a/../a/t.csv"),
        "symlinked file": table(data, path="link.csv"),
        "relative data root": table(Path("data"), path="a/t.csv"),
        "data root with dot-dot": table(data / "a" / "..", path="a/t.csv"),
        "symlinked data root": table(tmp_path / "data-link", path="a/t.csv"),
        "absolute, another data root": table(tmp_path / "elsewhere", path=str(source)),
        "files instead of path": table(data, files={"all": "a/t.csv"}),
    }
    for spelling, reader in spellings.items():
        assert run(reader, root).cache_dir == first.cache_dir, spelling
    assert complete_folders(root) == [first.cache_dir]


def test_the_data_root_from_the_environment_or_the_config_finds_one_cache(tmp_path, monkeypatch):
    from embdim.config import RunConfig
    from embdim.train.run import prepare_dataset

    write_table(tmp_path / "data" / "t.csv")
    dataset = {
        "name": NAME,
        "reader": "table",
        "options": {"path": "t.csv", "categorical": ["c1", "c2"], "numeric": ["x"], "label": "label"},
    }

    def config(data_root: str | None) -> RunConfig:
        cache_root = str(tmp_path / "cache")
        return RunConfig(name="r", dataset=dataset, model={"name": "fm"}, cache_root=cache_root, data_root=data_root)

    monkeypatch.chdir(tmp_path)
    from_config = prepare_dataset(config(str(tmp_path / "data")), progress=False)
    forbid_reading(monkeypatch)
    monkeypatch.setenv("EMBDIM_DATA_ROOT", "./data/")
    assert prepare_dataset(config(None), progress=False).cache_dir == from_config.cache_dir
    assert prepare_dataset(config("data"), progress=False).cache_dir == from_config.cache_dir
    assert complete_folders(tmp_path / "cache") == [from_config.cache_dir]


def test_a_symlinked_file_finds_the_cache_of_its_target(tmp_path, monkeypatch):
    source = write_table(tmp_path / "data" / "t.csv")
    elsewhere = tmp_path / "links"
    elsewhere.mkdir()
    (elsewhere / "t.csv").symlink_to(source)
    root = tmp_path / "cache"
    first = run(table(tmp_path / "data", path="t.csv"), root)
    forbid_reading(monkeypatch)
    assert run(table(elsewhere, path="t.csv"), root).cache_dir == first.cache_dir
    assert complete_folders(root) == [first.cache_dir]


def test_a_file_rewritten_with_its_size_and_mtime_kept_is_prepared_again(tmp_path):
    source = write_table(tmp_path / "data" / "t.csv")
    reader, root = table(tmp_path / "data", path="t.csv"), tmp_path / "cache"
    first = run(reader, root)
    st = source.stat()
    text = source.read_bytes()
    changed = text.replace(b",1\n", b",0\n", 1)  # one label flipped: same size
    assert len(changed) == len(text) and changed != text
    source.write_bytes(changed)
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert source.stat().st_size == st.st_size and source.stat().st_mtime_ns == st.st_mtime_ns
    rewritten = run(reader, root)
    assert rewritten.cache_dir != first.cache_dir
    assert positives(rewritten) == positives(first) - 1  # the new content, not the old cache
    write_table(source, rows=ROWS + 1)  # another size
    grown = run(reader, root)
    assert grown.cache_dir not in (first.cache_dir, rewritten.cache_dir)
    assert len(complete_folders(root)) == 3


def test_the_fingerprint_hashes_only_the_head_and_tail_of_a_large_file(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "FINGERPRINT_SAMPLE_BYTES", 4)
    source = tmp_path / "big.bin"

    def sample(content: bytes) -> str | None:
        source.write_bytes(content)
        return cache.file_fingerprint(source)["sample_sha256"]

    base = sample(b"head" + b"-" * 100 + b"tail")
    assert sample(b"head" + b"+" * 100 + b"tail") == base  # the middle is not read
    assert sample(b"Head" + b"-" * 100 + b"tail") != base
    assert sample(b"head" + b"-" * 100 + b"taiL") != base
    assert sample(b"head-tai") != sample(b"head+tai")  # a small file is hashed whole
    folder = tmp_path / "folder"
    folder.mkdir()
    assert cache.file_fingerprint(folder)["sample_sha256"] is None  # the reader says what is wrong with it


def test_options_that_change_the_rows_stay_in_the_key(tmp_path):
    write_table(tmp_path / "t.csv")
    base = key_of(table(tmp_path, path="t.csv"))
    changed = {
        "nrows": table(tmp_path, path="t.csv", nrows=10),
        "separator": table(tmp_path, path="t.csv", separator=";"),
        "columns": table(tmp_path, path="t.csv", has_header=False, columns=["c1", "c2", "x", "label"]),
        "label_threshold": table(tmp_path, path="t.csv", label_threshold=0.5),
        "categorical": TableReader(TableOptions(path="t.csv", categorical=["c1"], label="label"), tmp_path),
        "label_positive": table(tmp_path, path="t.csv", label_positive=1),
        "label_positive text": table(tmp_path, path="t.csv", label_positive="1"),
        "missing_values": table(tmp_path, path="t.csv", missing_values=["?"]),
        "missing_values of a column": table(tmp_path, path="t.csv", missing_values={"c1": ["?"]}),
        "missing_values of another column": table(tmp_path, path="t.csv", missing_values={"c2": ["?"]}),
    }
    keys = {option: key_of(reader) for option, reader in changed.items()}
    assert base not in keys.values() and len(set(keys.values())) == len(keys), keys
    assert key_of(table(tmp_path, path="t.csv")) == base


def test_split_files_are_keyed_in_split_order_by_their_role(tmp_path):
    a, b, c = (write_table(tmp_path / f"{name}.csv", seed=seed) for seed, name in enumerate("abc"))
    given = table(tmp_path, files={"test": "c.csv", "train": "a.csv", "valid": "b.csv"})
    payload = key_payload(given, PreprocessConfig())
    assert [(s["role"], s["path"]) for s in payload["sources"]] == [
        ("train", str(a)),
        ("valid", str(b)),
        ("test", str(c)),
    ]
    assert "path" not in payload["reader_options"] and "files" not in payload["reader_options"]
    in_order = table(tmp_path, files={"train": "a.csv", "valid": "b.csv", "test": "c.csv"})
    assert key_of(in_order) == key_of(given)  # the order the config lists them in does not matter
    swapped = table(tmp_path, files={"train": "c.csv", "valid": "b.csv", "test": "a.csv"})
    without_test = table(tmp_path, files={"train": "a.csv", "valid": "b.csv"})
    as_valid = table(tmp_path, files={"train": "a.csv", "test": "b.csv"})
    keys = {key_of(given), key_of(swapped), key_of(without_test), key_of(as_valid)}
    assert len(keys) == 4


def test_side_tables_are_keyed_by_file_not_by_spelling(tmp_path):
    from embdim.data.readers.ipinyou import IPinYouOptions, IPinYouReader
    from embdim.data.readers.movielens import MovieLens1MOptions, MovieLens1MReader

    for name in ("ratings.dat", "users.dat", "movies.dat", "train.txt", "featindex.txt"):
        (tmp_path / name).write_text(name)
    movielens = MovieLens1MOptions(ratings="ratings.dat", users="users.dat", movies="movies.dat")
    spelled = MovieLens1MOptions(ratings=str(tmp_path / "ratings.dat"), users="./users.dat", movies="movies.dat")
    assert key_of(MovieLens1MReader(movielens, tmp_path)) == key_of(MovieLens1MReader(spelled, tmp_path))
    # the same file as the user table or as the movie table is not the same dataset
    as_users = MovieLens1MOptions(ratings="ratings.dat", users="users.dat", movies=None)
    as_movies = MovieLens1MOptions(ratings="ratings.dat", users=None, movies="users.dat")
    assert key_of(MovieLens1MReader(as_users, tmp_path)) != key_of(MovieLens1MReader(as_movies, tmp_path))
    ipinyou = IPinYouOptions(files={"train": "train.txt"}, featindex="featindex.txt")
    moved = IPinYouOptions(files={"train": "./train.txt"}, featindex=str(tmp_path / "featindex.txt"))
    before = key_of(IPinYouReader(ipinyou, tmp_path))
    assert key_of(IPinYouReader(moved, tmp_path)) == before
    (tmp_path / "featindex.txt").write_text("featindex.txT")  # same size, maybe the same mtime
    assert key_of(IPinYouReader(ipinyou, tmp_path)) != before


def test_every_declared_source_option_is_an_option_of_its_reader():
    for name in READERS.names():
        options = READERS.get(name).Options
        assert set(options.model_fields) >= options.SOURCE_OPTIONS, name
