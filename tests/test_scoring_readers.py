"""Scoring mode (``Reader.for_scoring``): every registered reader reads one file of rows, with or without
labels, one output row per input row in file order, whole or in chunks alike.

Each reader has a sample below: a small file in its format with labels, the same rows without them,
and a file that mixes the two. A reader registered without a sample fails
:func:`test_every_registered_reader_has_a_scoring_sample_unless_it_cannot_score`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from embdim.data.raw import LABEL, DataError
from embdim.data.readers.avazu import AVAZU_COLUMNS, AvazuOptions, AvazuReader
from embdim.data.readers.base import Reader
from embdim.data.readers.criteo import CriteoOptions, CriteoReader
from embdim.data.readers.frappe import FrappeOptions, FrappeReader
from embdim.data.readers.ipinyou import IPinYouOptions, IPinYouReader
from embdim.data.readers.libfm import FRAPPE_FIELDS, FrappeLibFMOptions, FrappeLibFMReader, LibFMOptions, LibFMReader
from embdim.data.readers.movielens import (
    ML100K_GENRES,
    MovieLens1MOptions,
    MovieLens1MReader,
    MovieLens100KOptions,
    MovieLens100KReader,
    MovieLensLatestOptions,
    MovieLensLatestReader,
)
from embdim.data.readers.table import TableOptions, TableReader
from embdim.data.synthetic import SyntheticReader, SyntheticSpec
from embdim.plugins import READERS

CHUNK_ROWS = 3
"""Rows per chunk of a chunked read: every sample crosses a few chunk boundaries."""
NOT_SCORABLE = {"synthetic"}
"""Readers that generate their rows and cannot score a file."""
LOG_READERS = {"frappe"}
"""Readers that build labelled rows from a log of positives (sampled negatives): they score the log's rows."""


@dataclass
class Sample:
    """A reader's small file in three variants.

    Attributes:
        reader: the training reader of ``labelled`` (as its one file, or its ratings).
        labelled: the rows with labels.
        unlabelled: the same rows without labels.
        mixed: unlabelled rows and one labelled row.
        mixed_error: what the error about ``mixed`` says (a regex naming file and line).
        rows: the data rows of each file.
    """

    reader: Reader
    labelled: Path
    unlabelled: Path
    mixed: Path
    mixed_error: str
    rows: int


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def mixed_lines(unlabelled: list[str], labelled: list[str], at: int) -> list[str]:
    """The unlabelled lines with the labelled line ``at`` (0-based) in place of its unlabelled twin."""
    return [*unlabelled[:at], labelled[at], *unlabelled[at + 1 :]]


# ---------------------------------------------------------------------------------------------------
# one sample per reader


def criteo_sample(root: Path) -> Sample:
    rows = []
    for i in range(7):
        ints = [str(i * k) if (i + k) % 4 else "" for k in range(13)]
        cats = [f"{(i + k) % 3:x}{k:02x}ab" if (i + k) % 5 else "" for k in range(26)]
        rows.append([str(i % 2), *ints, *cats])
    labelled = ["\t".join(row) for row in rows]
    unlabelled = ["\t".join(row[1:]) for row in rows]
    path = write_lines(root / "criteo.txt", labelled)
    return Sample(
        reader=CriteoReader(CriteoOptions(path=str(path)), root),
        labelled=path,
        unlabelled=write_lines(root / "criteo_test.txt", unlabelled),
        mixed=write_lines(root / "criteo_mixed.txt", mixed_lines(unlabelled, labelled, 4)),
        mixed_error=r"criteo_mixed.txt line 5: expected 39 tab-separated columns \(.*no label.*\), found 40",
        rows=len(rows),
    )


def avazu_sample(root: Path) -> Sample:
    rows = []
    for i in range(7):
        hour = f"141021{(i * 5) % 24:02d}" if i % 3 else f"141025{i:02d}"
        rows.append([str(1000 + i), str(i % 2), hour, *[f"v{(i * k) % 4}" for k in range(21)]])
    unlabelled_header = ",".join(name for name in AVAZU_COLUMNS if name != "click")
    labelled = [",".join(AVAZU_COLUMNS), *(",".join(row) for row in rows)]
    unlabelled = [unlabelled_header, *(",".join(row[:1] + row[2:]) for row in rows)]
    path = write_lines(root / "avazu.csv", labelled)
    return Sample(
        reader=AvazuReader(AvazuOptions(path=str(path)), root),
        labelled=path,
        unlabelled=write_lines(root / "avazu_test.csv", unlabelled),
        mixed=write_lines(root / "avazu_mixed.csv", mixed_lines(unlabelled, labelled, 3)),
        mixed_error=r"avazu_mixed.csv line 4: expected 23 comma-separated columns \(.*no label.*\), found 24",
        rows=len(rows),
    )


def libfm_lines(n_pairs: int, rows: int) -> tuple[list[str], list[str]]:
    """Labelled and unlabelled libFM lines with ``n_pairs`` pairs, every label spelling used."""
    labels = ["1", "-1", "0", "+1"]
    pairs = [" ".join(f"{(i * 7 + k) % 5 + 10 * k}:1" for k in range(n_pairs)) for i in range(rows)]
    return [f"{labels[i % 4]} {pair}" for i, pair in enumerate(pairs)], pairs


def libfm_sample(root: Path) -> Sample:
    labelled, unlabelled = libfm_lines(3, 7)
    path = write_lines(root / "f.libfm", labelled)
    return Sample(
        reader=LibFMReader(LibFMOptions(path=str(path)), root),
        labelled=path,
        unlabelled=write_lines(root / "f_test.libfm", unlabelled),
        mixed=write_lines(root / "f_mixed.libfm", mixed_lines(unlabelled, labelled, 5)),
        mixed_error=r"f_mixed.libfm line 6: expected 3 space-separated columns \(.*no label.*\), found 4",
        rows=7,
    )


def frappe_libfm_sample(root: Path) -> Sample:
    labelled, unlabelled = libfm_lines(len(FRAPPE_FIELDS), 7)
    path = write_lines(root / "frappe.libfm", labelled)
    return Sample(
        reader=FrappeLibFMReader(FrappeLibFMOptions(path=str(path)), root),
        labelled=path,
        unlabelled=write_lines(root / "frappe_test.libfm", unlabelled),
        mixed=write_lines(root / "frappe_mixed.libfm", mixed_lines(unlabelled, labelled, 1)),
        mixed_error=r"frappe_mixed.libfm line 2: expected 10 space-separated columns \(.*no label.*\), found 11",
        rows=7,
    )


def ipinyou_sample(root: Path) -> Sample:
    write_lines(root / "featindex.txt", ["a:other\t0", "a:x\t1", "a:y\t2", "b:other\t3", "b:u:v\t4"])
    pairs = [f"{i % 3}:1 {3 + i % 2}:1" for i in range(7)]
    labelled = [f"{i % 2} {pair}" for i, pair in enumerate(pairs)]
    path = write_lines(root / "ipinyou.txt", labelled)
    return Sample(
        reader=IPinYouReader(IPinYouOptions(path=str(path), featindex="featindex.txt"), root),
        labelled=path,
        unlabelled=write_lines(root / "ipinyou_test.txt", pairs),
        mixed=write_lines(root / "ipinyou_mixed.txt", mixed_lines(pairs, labelled, 2)),
        mixed_error=r"ipinyou_mixed.txt line 3: expected 2 space-separated columns \(.*no label.*\), found 3",
        rows=7,
    )


RATINGS = [("1", "1", "5"), ("2", "3", "3"), ("1", "2", "4"), ("9", "1", "1"), ("2", "9", "2"), ("1", "3", "4")]
"""User, item, rating: every rating from 1 to 5 (the threshold is 4), a user (9) and an item (9) that
the side tables lack."""


def ratings_files(root: Path, name: str, separator: str, header: list[str] | None = None) -> tuple[Path, Path, Path]:
    """Ratings (user, item, rating, timestamp), the same without rating, and the two mixed."""
    labelled = [separator.join([*row, str(978300760 + i)]) for i, row in enumerate(RATINGS)]
    unlabelled = [separator.join([user, item, str(978300760 + i)]) for i, (user, item, _) in enumerate(RATINGS)]
    mixed = mixed_lines(unlabelled, labelled, 2)
    heads: tuple[list[str], list[str]] = ([], [])
    if header is not None:
        heads = ([separator.join(header)], [separator.join(column for column in header if column != "rating")])
    return (
        write_lines(root / f"{name}.ratings", [*heads[0], *labelled]),
        write_lines(root / f"{name}_test.ratings", [*heads[1], *unlabelled]),
        write_lines(root / f"{name}_mixed.ratings", [*heads[1], *mixed]),
    )


def movielens_100k_sample(root: Path) -> Sample:
    write_lines(root / "u.user", ["1|24|M|technician|85711", "2|53|F|other|94043"])
    flags = ["0"] * len(ML100K_GENRES)
    movies = [f"{item}|Movie {item} (1995)|01-Jan-199{item}||http://x|" + "|".join(flags) for item in "123"]
    write_lines(root / "u.item", movies)
    labelled, unlabelled, mixed = ratings_files(root, "ml100k", "\t")
    options = MovieLens100KOptions(ratings=str(labelled), users="u.user", movies="u.item")
    return Sample(
        reader=MovieLens100KReader(options, root),
        labelled=labelled,
        unlabelled=unlabelled,
        mixed=mixed,
        mixed_error=r"ml100k_mixed.ratings line 3: expected 3 tab-separated columns \(no label.*\), found 4",
        rows=len(RATINGS),
    )


def movielens_1m_sample(root: Path) -> Sample:
    write_lines(root / "users.dat", ["1::F::1::10::48067", "2::M::56::16::70072"])
    write_lines(root / "movies.dat", [f"{item}::Movie {item} (199{item})::Comedy|Drama" for item in "123"])
    labelled, unlabelled, mixed = ratings_files(root, "ml1m", "::")
    options = MovieLens1MOptions(ratings=str(labelled), users="users.dat", movies="movies.dat")
    return Sample(
        reader=MovieLens1MReader(options, root),
        labelled=labelled,
        unlabelled=unlabelled,
        mixed=mixed,
        mixed_error=r"ml1m_mixed.ratings line 3: expected 3 '::'-separated columns \(no label.*\), found 4",
        rows=len(RATINGS),
    )


def movielens_latest_sample(root: Path) -> Sample:
    write_lines(root / "movies.csv", ["movieId,title,genres", *(f'{i},"Movie, {i} (1995)",Comedy' for i in "123")])
    header = ["userId", "movieId", "rating", "timestamp"]
    labelled, unlabelled, mixed = ratings_files(root, "latest", ",", header)
    return Sample(
        reader=MovieLensLatestReader(MovieLensLatestOptions(ratings=str(labelled), movies="movies.csv"), root),
        labelled=labelled,
        unlabelled=unlabelled,
        mixed=mixed,
        mixed_error=r"latest_mixed.ratings line 4: expected 3 comma-separated columns \(no label.*\), found 4",
        rows=len(RATINGS),
    )


TABLE = {"categorical": ["user", "city"], "numeric": ["age"], "label": "y"}


def table_rows() -> list[list[str]]:
    """user, age, city, y: missing values in every feature column."""
    return [
        [f"u{i % 3}" if i != 4 else "", str(20 + i) if i % 3 else "", ["Paris", "Rome", ""][i % 3], str(i % 2)]
        for i in range(7)
    ]


def table_sample(root: Path) -> Sample:
    rows = table_rows()
    labelled = ["user,age,city,y", *(",".join(row) for row in rows)]
    unlabelled = ["user,age,city", *(",".join(row[:3]) for row in rows)]
    path = write_lines(root / "t.csv", labelled)
    return Sample(
        reader=TableReader(TableOptions(path=str(path), **TABLE), root),
        labelled=path,
        unlabelled=write_lines(root / "t_test.csv", unlabelled),
        mixed=write_lines(root / "t_mixed.csv", mixed_lines(unlabelled, labelled, 3)),
        mixed_error=r"t_mixed.csv line 4: expected 3 comma-separated columns, found 4",
        rows=len(rows),
    )


SAMPLES: dict[str, Callable[[Path], Sample]] = {
    "criteo": criteo_sample,
    "avazu": avazu_sample,
    "libfm": libfm_sample,
    "frappe_libfm": frappe_libfm_sample,
    "ipinyou": ipinyou_sample,
    "movielens_100k": movielens_100k_sample,
    "movielens_1m": movielens_1m_sample,
    "movielens_latest": movielens_latest_sample,
    "table": table_sample,
}
SCORABLE = [name for name in READERS.names() if name not in NOT_SCORABLE | LOG_READERS]
WITH_ROW_LIMIT = [name for name in SCORABLE if "nrows" in READERS.get(name).Options.model_fields]


def frame_of(reader: Reader) -> pl.DataFrame:
    raw = reader.read()
    assert list(raw.splits) == ["all"]
    return raw.splits["all"]


def chunked_frame(reader: Reader, rows: int) -> pl.DataFrame | None:
    """The rows of ``reader.chunked`` (checked: one pool, chunks of at most CHUNK_ROWS, counted rows)."""
    chunked = reader.chunked(CHUNK_ROWS)
    if chunked is None:
        return None
    assert [source.split for source in chunked.sources] == ["all"]
    source = chunked.sources[0]
    assert source.count_rows() == rows
    chunks = list(source.chunks())
    assert len(chunks) > 1 and all(chunk.height <= CHUNK_ROWS for chunk in chunks)
    return pl.concat(chunks)


# ---------------------------------------------------------------------------------------------------
# every reader


def test_every_registered_reader_has_a_scoring_sample_unless_it_cannot_score() -> None:
    assert sorted(SCORABLE) == sorted(SAMPLES), "a new reader needs a sample here, or a place in NOT_SCORABLE"


def test_readers_that_generate_their_rows_cannot_score_a_file(tmp_path: Path) -> None:
    assert {SyntheticReader: "synthetic"} == {READERS.get(n): n for n in NOT_SCORABLE}
    assert SyntheticReader(SyntheticSpec(cardinalities=[3]), tmp_path).for_scoring(tmp_path / "x.csv") is None


def test_a_log_reader_scores_the_logs_rows_unlabelled_without_sampling_negatives(tmp_path: Path) -> None:
    from test_readers import write_frappe_zip

    assert {FrappeReader: "frappe"} == {READERS.get(n): n for n in LOG_READERS}
    context = "morning\tsunday\tweekend\tunknown\tfree\tsunny\tSpain\t0\n"
    write_frappe_zip(tmp_path / "log.zip", [f"u{k}\ti{k}\t1\t{context}" for k in range(5)])
    reader = FrappeReader(FrappeOptions(path="elsewhere.zip", negatives_per_positive=3), tmp_path)
    frame = frame_of(reader.for_scoring(tmp_path / "log.zip"))
    assert frame.height == 5 and frame[LABEL].null_count() == 5  # one row per log line, in log order
    assert frame["user"].to_list() == [f"u{k}" for k in range(5)]
    trained = reader.scoring_copy(path=str(tmp_path / "log.zip"), negatives_per_positive=0)
    trained.scoring = False
    assert_frame_equal(frame.drop(LABEL), trained.read().splits["all"].drop(LABEL))


@pytest.mark.parametrize("name", SCORABLE)
def test_a_labelled_file_scores_as_its_training_read(name: str, tmp_path: Path) -> None:
    sample = SAMPLES[name](tmp_path)
    trained = sample.reader.read()
    scoring = sample.reader.for_scoring(sample.labelled)
    assert scoring is not None and scoring.scoring and not sample.reader.scoring
    assert type(scoring) is type(sample.reader)
    raw = scoring.read()
    assert (raw.categorical, raw.numeric, raw.skipped) == (trained.categorical, trained.numeric, {})
    frame = frame_of(scoring)
    assert frame.height == sample.rows  # no row dropped: ratings below the threshold, unknown users included
    assert_frame_equal(frame, trained.splits["all"])
    assert frame[LABEL].null_count() == 0 and frame[LABEL].sum() > 0


@pytest.mark.parametrize("name", SCORABLE)
def test_an_unlabelled_file_gives_the_same_features_and_null_labels(name: str, tmp_path: Path) -> None:
    sample = SAMPLES[name](tmp_path)
    labelled = frame_of(sample.reader.for_scoring(sample.labelled))
    unlabelled = frame_of(sample.reader.for_scoring(sample.unlabelled))
    assert unlabelled.schema == labelled.schema and unlabelled.schema[LABEL] == pl.Float32
    assert_frame_equal(unlabelled.drop(LABEL), labelled.drop(LABEL))
    assert unlabelled[LABEL].null_count() == unlabelled.height == sample.rows


@pytest.mark.parametrize("name", SCORABLE)
def test_a_whole_and_a_chunked_scoring_read_give_the_same_rows(name: str, tmp_path: Path) -> None:
    sample = SAMPLES[name](tmp_path)
    for path in (sample.labelled, sample.unlabelled):
        scoring = sample.reader.for_scoring(path)
        chunked = chunked_frame(scoring, sample.rows)
        if chunked is None:  # a reader that only reads whole files, in training too
            assert sample.reader.chunked(CHUNK_ROWS) is None
            continue
        assert_frame_equal(chunked, frame_of(scoring))


@pytest.mark.parametrize("name", SCORABLE)
def test_a_file_mixing_labelled_and_unlabelled_lines_is_an_error_naming_the_line(name: str, tmp_path: Path) -> None:
    sample = SAMPLES[name](tmp_path)
    scoring = sample.reader.for_scoring(sample.mixed)
    with pytest.raises(DataError, match=sample.mixed_error):
        scoring.read()
    chunked = scoring.chunked(2)
    if chunked is not None:
        with pytest.raises(DataError, match=sample.mixed_error):
            list(chunked.sources[0].chunks())


@pytest.mark.parametrize("name", WITH_ROW_LIMIT)
def test_a_row_limit_of_the_training_options_does_not_apply_to_scoring(name: str, tmp_path: Path) -> None:
    sample = SAMPLES[name](tmp_path)
    reader = sample.reader
    limited = type(reader)(reader.options.model_copy(update={"nrows": 2}), reader.root)
    assert frame_of(limited).height == 2
    scoring = limited.for_scoring(sample.labelled)
    assert scoring.options.nrows is None and frame_of(scoring).height == sample.rows


# ---------------------------------------------------------------------------------------------------
# which file is read


def test_scoring_reads_only_the_given_file_whatever_the_training_files(tmp_path: Path) -> None:
    sample = criteo_sample(tmp_path)
    split = CriteoReader(CriteoOptions(files={"train": "a.txt", "valid": "b.txt", "test": "c.txt"}), tmp_path)
    for training in (split, CriteoReader(CriteoOptions(), tmp_path)):  # given split files, the default ones
        scoring = training.for_scoring(sample.unlabelled)
        assert scoring.sources() == [sample.unlabelled] and frame_of(scoring).height == sample.rows
    ipinyou = ipinyou_sample(tmp_path).reader.for_scoring(tmp_path / "in.txt")
    assert ipinyou.source_files() == {"all": tmp_path / "in.txt", "featindex": tmp_path / "featindex.txt"}
    movielens = movielens_1m_sample(tmp_path).reader.for_scoring(tmp_path / "in.dat")
    assert movielens.sources() == [tmp_path / "in.dat", tmp_path / "users.dat", tmp_path / "movies.dat"]


def test_a_relative_scoring_path_is_relative_to_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    sample = criteo_sample(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    (work / "in.txt").write_bytes(sample.unlabelled.read_bytes())
    monkeypatch.chdir(work)
    data_root = tmp_path / "data"  # relative training paths are read below it; a scoring input is not
    scoring = CriteoReader(CriteoOptions(path="train.txt"), data_root).for_scoring(Path("in.txt"))
    assert scoring.sources() == [work / "in.txt"] and frame_of(scoring).height == sample.rows


# ---------------------------------------------------------------------------------------------------
# formats in more than one layout


def test_criteo_labelled_lines_with_one_unlabelled_line_name_it(tmp_path: Path) -> None:
    sample = criteo_sample(tmp_path)
    labelled = sample.labelled.read_text().splitlines()
    unlabelled = sample.unlabelled.read_text().splitlines()
    path = write_lines(tmp_path / "m.txt", mixed_lines(labelled, unlabelled, 2))
    with pytest.raises(DataError, match=r"m.txt line 3: expected 40 tab-separated columns .*found 39"):
        sample.reader.for_scoring(path).read()


def test_avazu_without_header_scores_with_and_without_click(tmp_path: Path) -> None:
    sample = avazu_sample(tmp_path)
    expected = frame_of(sample.reader.for_scoring(sample.labelled))
    for variant in (sample.labelled, sample.unlabelled):
        plain = write_lines(tmp_path / f"plain_{variant.name}", variant.read_text().splitlines()[1:])
        scoring = sample.reader.for_scoring(plain)
        frame = frame_of(scoring)
        assert_frame_equal(frame.drop(LABEL), expected.drop(LABEL))
        assert_frame_equal(chunked_frame(scoring, sample.rows), frame)
        if variant == sample.labelled:
            assert_frame_equal(frame, expected)
        else:
            assert frame[LABEL].null_count() == sample.rows


def test_a_table_without_header_scores_with_one_column_fewer(tmp_path: Path) -> None:
    rows = table_rows()
    labelled = write_lines(tmp_path / "t.tsv", ["\t".join(row) for row in rows])
    unlabelled = write_lines(tmp_path / "u.tsv", ["\t".join(row[:3]) for row in rows])
    options = TableOptions(path=str(labelled), has_header=False, columns=["user", "age", "city", "y"], **TABLE)
    reader = TableReader(options, tmp_path)
    expected = frame_of(reader)
    assert_frame_equal(frame_of(reader.for_scoring(labelled)), expected)
    scoring = reader.for_scoring(unlabelled)
    frame = frame_of(scoring)
    assert_frame_equal(frame.drop(LABEL), expected.drop(LABEL))
    assert frame[LABEL].null_count() == len(rows)
    assert_frame_equal(chunked_frame(scoring, len(rows)), frame)
    with pytest.raises(DataError, match=r"u.tsv line 1: expected 4 tab-separated columns, found 3"):
        reader.read_file(unlabelled)  # training needs the label


def test_a_parquet_table_scores_with_and_without_its_label_column(tmp_path: Path) -> None:
    frame = pl.DataFrame({"user": ["a", None, "b", "a", "c"], "age": [1.5, 2.0, None, 4.0, 5.0], "y": [1, 0, 0, 1, 0]})
    frame.write_parquet(tmp_path / "t.parquet")
    frame.drop("y").write_parquet(tmp_path / "u.parquet")
    reader = TableReader(TableOptions(path="t.parquet", categorical=["user"], numeric=["age"], label="y"), tmp_path)
    expected = frame_of(reader)
    assert_frame_equal(frame_of(reader.for_scoring(tmp_path / "t.parquet")), expected)
    scoring = reader.for_scoring(tmp_path / "u.parquet")
    unlabelled = frame_of(scoring)
    assert_frame_equal(unlabelled.drop(LABEL), expected.drop(LABEL))
    assert unlabelled[LABEL].dtype == pl.Float32 and unlabelled[LABEL].null_count() == 5
    assert_frame_equal(chunked_frame(scoring, 5), unlabelled)
    with pytest.raises(DataError, match=r"u.parquet: label column 'y' not found"):
        reader.read_file(tmp_path / "u.parquet")  # training needs the label


def test_scoring_binarises_labels_as_training_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_lines(tmp_path / "a.csv", ["work,income", "gov,<=50K", "?,>50K", "shop, >50K"])
    options = TableOptions(path=str(path), categorical=["work"], label="income", label_positive=">50K")
    reader = TableReader(options, tmp_path)
    scored = frame_of(reader.for_scoring(path))
    assert scored[LABEL].to_list() == [0.0, 1.0, 1.0]
    assert_frame_equal(scored, frame_of(reader))
    unlabelled = write_lines(tmp_path / "b.csv", ["work", "gov", "?"])
    monkeypatch.setattr(logging.getLogger("embdim"), "propagate", True)  # the CLI may have turned it off
    caplog.set_level(logging.INFO, logger="embdim")
    assert frame_of(reader.for_scoring(unlabelled))[LABEL].null_count() == 2
    assert not [r for r in caplog.records if "b.csv" in r.getMessage()]  # no counts of labels it does not have
    threshold = MovieLens100KReader(MovieLens100KOptions(users=None, movies=None, label_threshold=3), tmp_path)
    ratings = write_lines(tmp_path / "u.data", ["1\t1\t2\t0", "1\t2\t3\t0", "2\t1\t5\t0"])
    assert frame_of(threshold.for_scoring(ratings))[LABEL].to_list() == [0.0, 1.0, 1.0]


def test_movielens_scores_user_and_item_pairs_alone(tmp_path: Path) -> None:
    sample = movielens_100k_sample(tmp_path)
    pairs = write_lines(tmp_path / "pairs.tsv", [f"{user}\t{item}" for user, item, _ in RATINGS])
    frame = frame_of(sample.reader.for_scoring(pairs))
    expected = frame_of(sample.reader.for_scoring(sample.labelled))
    assert_frame_equal(frame.drop(LABEL), expected.drop(LABEL))
    assert frame[LABEL].null_count() == len(RATINGS)
    latest = movielens_latest_sample(tmp_path)
    pairs = write_lines(tmp_path / "pairs.csv", ["userId,movieId", *(f"{u},{i}" for u, i, _ in RATINGS)])
    assert (
        frame_of(latest.reader.for_scoring(pairs))
        .drop(LABEL)
        .equals(frame_of(latest.reader.for_scoring(latest.labelled)).drop(LABEL))
    )
    write_lines(pairs, ["userId,itemId", *(f"{u},{i}" for u, i, _ in RATINGS)])
    with pytest.raises(DataError, match=r"pairs.csv line 1: expected the header 'userId,movieId'"):
        latest.reader.for_scoring(pairs).read()
