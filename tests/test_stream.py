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


#: the default suite's sample: every layout, every numeric mode, both chunk sizes (EVERY, slow, crosses them all)
SAMPLE = [("pool", "discretize", 7), ("given", "discretize", 64), ("carved", "discretize", 64)]
SAMPLE += [("nrows", "discretize", 64), ("pool", "dense", 64), ("given", "both", 7)]
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


def test_counts_merged_many_times_give_the_identical_cache(criteo_files, tmp_path, monkeypatch):
    # at scale a field's chunk counts are merged into its running total as they grow; here after
    # every few chunks, so that totals are merged with totals and with fresh chunks alike
    import embdim.data.stream as stream

    monkeypatch.setattr(stream, "MERGE_MIN_ROWS", 10)
    merges = []
    merged = stream._Counter._merged
    monkeypatch.setattr(stream._Counter, "_merged", lambda self: merges.append(1) or merged(self))
    _check_identical(criteo_files, tmp_path, "pool", "discretize", 32)
    assert len(merges) > 39 * 3  # several merges per id field before the final one


@pytest.mark.parametrize("cached_keys", [0, 1 << 30])
def test_large_and_small_vocabularies_encode_alike(criteo_files, tmp_path, monkeypatch, cached_keys):
    # a field's ids are searched with the queries sorted first when its vocabulary is large (0: every
    # field here) and without when it is small (every field): both give the in-memory cache
    import embdim.data.stream as stream

    monkeypatch.setattr(stream, "CACHED_KEYS", cached_keys)
    _check_identical(criteo_files, tmp_path, "pool", "discretize", 64)


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


# ---------------------------------------------------------------------- the other streaming readers
def _write_avazu(path: Path, rows: int, header: bool) -> Path:
    import random

    rnd = random.Random(0)
    from embdim.data.readers.avazu import AVAZU_COLUMNS

    lines = [",".join(AVAZU_COLUMNS)] if header else []
    for i in range(rows):
        hour = f"1410{21 + rnd.randrange(8):02d}{rnd.randrange(24):02d}"
        values = [f"v{rnd.randrange(1 + k * 3)}" for k in range(21)]
        lines.append(f"{i},{rnd.randrange(2)},{hour}," + ",".join(values))
    path.write_text("\n".join(lines) + "\n")
    return path


def _write_libfm(path: Path, rows: int) -> Path:
    import random

    rnd = random.Random(1)
    lines = [
        f"{rnd.choice(['1', '-1'])} " + " ".join(f"{rnd.randrange(50) * 10 + k}:1" for k in range(4))
        for _ in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _write_table(path: Path, rows: int, fmt: str) -> Path:
    import random

    import polars as pl

    rnd = random.Random(2)
    frame = pl.DataFrame(
        {
            "user": [f"u{rnd.randrange(40)}" for _ in range(rows)],
            "item": [f"i{rnd.randrange(90)}" if rnd.random() > 0.1 else None for _ in range(rows)],
            "age": [rnd.choice([None, 1.5, 20.0, 33.0, float(rnd.randrange(80))]) for _ in range(rows)],
            "y": [rnd.randrange(2) for _ in range(rows)],
        }
    )
    if fmt == "parquet":
        frame.write_parquet(path)
    else:
        frame.write_csv(path, separator="," if fmt == "csv" else "\t", quote_style="never")
    return path


def _write_coded_table(path: Path, rows: int, fmt: str) -> Path:
    """A table whose label is text (``>50K`` / ``<=50K``) and whose missing values are spelt ``?`` and ``NA``."""
    import random

    import polars as pl

    rnd = random.Random(3)
    frame = pl.DataFrame(
        {
            "user": [rnd.choice([f"u{rnd.randrange(40)}", "?", " ? "]) for _ in range(rows)],
            "item": [f"i{rnd.randrange(90)}" if rnd.random() > 0.1 else "NA" for _ in range(rows)],
            "age": [rnd.choice(["?", "NA", "1.5", "20", str(rnd.randrange(80))]) for _ in range(rows)],
            "y": [rnd.choice([">50K", " <=50K", "<=50K"]) for _ in range(rows)],
        }
    )
    if fmt == "parquet":
        frame.write_parquet(path)
    else:
        frame.write_csv(path, quote_style="never")
    return path


def _readers(tmp_path: Path):
    from embdim.data.readers.avazu import AvazuOptions, AvazuReader
    from embdim.data.readers.libfm import LibFMOptions, LibFMReader
    from embdim.data.readers.table import TableOptions, TableReader

    table = {"categorical": ["user", "item"], "numeric": ["age"], "label": "y"}
    coded = {**table, "label_positive": ">50K"}
    by_column = {"user": ["?"], "item": ["NA"], "age": ["?", "NA"]}
    return {
        "csv-coded": TableReader(
            TableOptions(
                path=str(_write_coded_table(tmp_path / "g.csv", 400, "csv")), missing_values=["?", "NA"], **coded
            ),
            tmp_path,
        ),
        "parquet-coded": TableReader(
            TableOptions(
                path=str(_write_coded_table(tmp_path / "h.parquet", 400, "parquet")), missing_values=by_column, **coded
            ),
            tmp_path,
        ),
        "avazu-header": AvazuReader(AvazuOptions(path=str(_write_avazu(tmp_path / "a.csv", 400, True))), tmp_path),
        "avazu-plain": AvazuReader(AvazuOptions(path=str(_write_avazu(tmp_path / "b.csv", 400, False))), tmp_path),
        "libfm": LibFMReader(LibFMOptions(path=str(_write_libfm(tmp_path / "c.libfm", 400))), tmp_path),
        "csv": TableReader(TableOptions(path=str(_write_table(tmp_path / "d.csv", 400, "csv")), **table), tmp_path),
        "tsv": TableReader(TableOptions(path=str(_write_table(tmp_path / "e.tsv", 400, "tsv")), **table), tmp_path),
        "parquet": TableReader(
            TableOptions(path=str(_write_table(tmp_path / "f.parquet", 400, "parquet")), **table), tmp_path
        ),
    }


@pytest.mark.parametrize(
    "name", ["avazu-header", "avazu-plain", "libfm", "csv", "tsv", "parquet", "csv-coded", "parquet-coded"]
)
def test_every_streaming_reader_writes_the_cache_of_its_in_memory_read(tmp_path, name):
    reader = _readers(tmp_path)[name]
    assert reader.chunked(16) is not None
    cfg = PreprocessConfig(min_count=2, numeric="both", split={"seed": 3})
    memory = prepare(reader, cfg, tmp_path / "a", "x", progress=False, streaming=False)
    streamed = prepare(reader, cfg, tmp_path / "b", "x", progress=False, streaming=True, chunk_rows=9)
    _same_cache(memory.cache_dir, streamed.cache_dir)
    if name.endswith("-coded"):  # the text labels and the missing tokens were read as such
        frame = reader.read().splits["all"]
        assert 0 < frame["label"].sum() < frame.height
        assert all(frame[column].null_count() > 0 for column in ("user", "item", "age"))


def test_a_quoted_csv_is_read_whole_instead_of_streamed(tmp_path):
    from embdim.data.readers.table import TableOptions, TableReader

    path = tmp_path / "q.csv"
    path.write_text('user,y\n"a\nb",1\nc,0\n' + "".join(f"u{i},{i % 2}\n" for i in range(60)))
    reader = TableReader(TableOptions(path=str(path), categorical=["user"], label="y"), tmp_path)
    data = prepare(reader, PreprocessConfig(), tmp_path / "cache", "q", progress=False, streaming=None, chunk_rows=4)
    assert sum(data.schema.rows.values()) == 62  # the quoted two-line value is one row
    from embdim.config import ConfigError

    with pytest.raises(ConfigError, match="quoted fields may span lines"):
        prepare(reader, PreprocessConfig(), tmp_path / "c2", "q", progress=False, streaming=True, chunk_rows=4)
