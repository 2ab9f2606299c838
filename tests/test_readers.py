"""Dataset readers: counts and values on the shared real data (skipped when absent), errors on bad files.

The expected numbers come from the READMEs in ``shared/datasets/*/``; the few that the READMEs do not
give (MovieLens positives at rating >= 4) were counted independently with ``awk``.
"""

from __future__ import annotations

import gzip
import os
import zipfile
from functools import cache
from pathlib import Path

import polars as pl
import pytest
from pydantic import ValidationError

from embdim.data.raw import LABEL, DataError, RawData
from embdim.data.readers.avazu import AvazuOptions, AvazuReader
from embdim.data.readers.criteo import CRITEO_CATEGORICAL, CRITEO_NUMERIC, CriteoOptions, CriteoReader
from embdim.data.readers.frappe import CONTEXT_FIELDS, FrappeOptions, FrappeReader
from embdim.data.readers.ipinyou import IPinYouOptions, IPinYouReader
from embdim.data.readers.libfm import (
    FRAPPE_FIELDS,
    FrappeLibFMOptions,
    FrappeLibFMReader,
    LibFMOptions,
    LibFMReader,
)
from embdim.data.readers.movielens import (
    MovieLens1MOptions,
    MovieLens1MReader,
    MovieLens100KOptions,
    MovieLens100KReader,
    MovieLensLatestOptions,
    MovieLensLatestReader,
)
from embdim.data.readers.table import TableOptions, TableReader

# ---------------------------------------------------------------------------------------------------
# helpers


def check_contract(raw: RawData) -> None:
    """Every frame: exactly categorical (Utf8) + numeric (Float64) + label (Float32 0/1), no empty strings."""
    assert raw.label == LABEL
    assert raw.sources and all(path.is_file() for path in raw.sources)
    for name, frame in raw.splits.items():
        assert frame.columns == [*raw.categorical, *raw.numeric, LABEL], name
        for column in raw.categorical:
            assert frame.schema[column] == pl.Utf8, column
            assert (frame[column] == "").sum() == 0, f"{column}: empty strings must be null"
        for column in raw.numeric:
            assert frame.schema[column] == pl.Float64, column
            assert frame[column].is_nan().sum() == 0, column
        assert frame.schema[LABEL] == pl.Float32
        assert frame[LABEL].null_count() == 0
        assert set(frame[LABEL].unique().to_list()) <= {0.0, 1.0}


def split_sizes(raw: RawData) -> dict[str, tuple[int, int]]:
    """Split -> (rows, positives)."""
    return {name: (frame.height, int(frame[LABEL].sum())) for name, frame in raw.splits.items()}


def distinct_counts(raw: RawData, columns: list[str]) -> dict[str, int]:
    """Distinct values over all splits (null counts as one value, as in the READMEs)."""
    frame = pl.concat(list(raw.splits.values()))
    return {column: frame[column].n_unique() for column in columns}


def write_gz(path: Path, text: str) -> Path:
    path.write_bytes(gzip.compress(text.encode()))
    return path


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def criteo_line(label: str = "0", **values: str) -> str:
    """A valid Criteo line; keyword arguments override columns (``I5="x"``)."""
    fields = {LABEL: label}
    fields.update({name: "1" for name in CRITEO_NUMERIC})
    fields.update({name: "0a1b2c3d" for name in CRITEO_CATEGORICAL})
    fields.update(values)
    return "\t".join(fields[name] for name in [LABEL, *CRITEO_NUMERIC, *CRITEO_CATEGORICAL]) + "\n"


def read_criteo(path: Path) -> RawData:
    return CriteoReader(CriteoOptions(path=path.name), path.parent).read()


# ---------------------------------------------------------------------------------------------------
# registry and options


def test_every_reader_is_registered_under_its_name() -> None:
    import embdim.data.readers  # noqa: F401  (registers the readers)
    import embdim.registry as registry

    expected = {
        "criteo": CriteoReader,
        "avazu": AvazuReader,
        "movielens_100k": MovieLens100KReader,
        "movielens_1m": MovieLens1MReader,
        "movielens_latest": MovieLensLatestReader,
        "frappe": FrappeReader,
        "frappe_libfm": FrappeLibFMReader,
        "ipinyou": IPinYouReader,
        "libfm": LibFMReader,
        "table": TableReader,
    }
    for name, reader in expected.items():
        assert registry.READERS.get(name) is reader


def test_options_reject_unknown_keys_and_conflicting_layouts() -> None:
    with pytest.raises(ValidationError, match="bogus"):
        CriteoOptions(bogus=1)
    with pytest.raises(ValidationError, match="either 'path' or 'files'"):
        CriteoOptions(path="a", files={"all": "b"})
    with pytest.raises(ValidationError, match="'all' next to split names"):
        CriteoOptions(files={"all": "a", "train": "b"})
    with pytest.raises(ValidationError):
        CriteoOptions(files={"training": "a"})
    with pytest.raises(ValidationError, match="user table"):
        MovieLensLatestOptions(user_fields=["age"])
    with pytest.raises(ValidationError, match="more than one role"):
        TableOptions(path="a.csv", categorical=["x"], numeric=["x"], label="y")


def test_sources_are_resolved_without_reading(tmp_path: Path) -> None:
    reader = CriteoReader(CriteoOptions(files={"train": "a.gz", "test": "/abs/b.gz"}), tmp_path)
    assert reader.sources() == [tmp_path / "a.gz", Path("/abs/b.gz")]
    ipinyou = IPinYouReader(IPinYouOptions(path="x.txt", featindex="f.txt"), tmp_path)
    assert ipinyou.sources() == [tmp_path / "x.txt", tmp_path / "f.txt"]


# ---------------------------------------------------------------------------------------------------
# Criteo

CRITEO_DISTINCT = {  # README "Distinct values per column over all 8,000 rows" (empty counts as one value)
    **dict(zip(CRITEO_NUMERIC, [69, 777, 286, 72, 4454, 747, 229, 63, 780, 6, 52, 25, 122], strict=True)),
    **dict(
        zip(
            CRITEO_CATEGORICAL,
            [157, 370, 4525, 3370, 53, 8, 2817, 82, 3, 2584, 1904, 4338, 1591,
             22, 1833, 3906, 9, 1055, 481, 4, 4141, 8, 12, 2153, 38, 1636],
            strict=True,
        )
    ),
}  # fmt: skip


def test_criteo_shared_sample(dataset_dir) -> None:
    root = dataset_dir("criteo-kaggle-sample").parent
    raw = CriteoReader(CriteoOptions(), root).read()
    check_contract(raw)
    assert raw.categorical == CRITEO_CATEGORICAL and raw.numeric == CRITEO_NUMERIC
    assert split_sizes(raw) == {"train": (7200, 1549), "valid": (409, 93), "test": (391, 86)}
    assert distinct_counts(raw, list(CRITEO_DISTINCT)) == CRITEO_DISTINCT
    first = raw.splits["train"].row(0, named=True)  # the first line of Kaggle train.txt
    assert first["I5"] == 1382.0 and first["I12"] is None and first["C22"] is None
    assert first["C1"] == "68fd1e64" and first["C26"] == "9727dd16"


def test_criteo_nrows_and_single_path(dataset_dir) -> None:
    root = dataset_dir("criteo-kaggle-sample").parent
    raw = CriteoReader(CriteoOptions(path="criteo-kaggle-sample/dev.csv.gz", nrows=100), root).read()
    assert list(raw.splits) == ["all"] and raw.splits["all"].height == 100


def test_criteo_tolerates_crlf_and_trailing_blank_lines(tmp_path: Path) -> None:
    text = criteo_line("1", I1="", C3="") + criteo_line("0", I1="-2")
    path = write_gz(tmp_path / "ok.txt.gz", text.replace("\n", "\r\n") + "\r\n\n")
    frame = read_criteo(path).splits["all"]
    assert frame[LABEL].to_list() == [1.0, 0.0]
    assert frame["I1"].to_list() == [None, -2.0]
    assert frame["C3"].to_list() == [None, "0a1b2c3d"]
    assert frame["C26"].to_list() == ["0a1b2c3d", "0a1b2c3d"]


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        (criteo_line().replace("\t0a1b2c3d\n", "\n"), "line 3: expected 40 tab-separated columns"),
        (criteo_line().replace("\n", "\textra\n"), "line 3: expected 40 tab-separated columns"),
        ("\n", "line 3: expected 40 tab-separated columns"),
        (criteo_line(label="x"), "line 3: label 'x' is not one of 0, 1"),
        (criteo_line(label="2"), "line 3: label '2' is not one of 0, 1"),
        (criteo_line(label=""), "line 3: label empty"),
        (criteo_line(I5="12a"), "line 3: column 'I5' value '12a' is not a number"),
    ],
)
def test_criteo_bad_line_is_named(tmp_path: Path, bad_line: str, expected: str) -> None:
    path = write_gz(tmp_path / "bad.csv.gz", criteo_line() * 2 + bad_line + criteo_line() * 3)
    with pytest.raises(DataError, match=expected) as caught:
        read_criteo(path)
    assert str(caught.value).startswith("bad.csv.gz line 3")


def test_column_count_errors_that_cancel_out_are_still_found(tmp_path: Path) -> None:
    short = criteo_line().replace("\t0a1b2c3d\n", "\n")
    long = criteo_line().replace("\n", "\tx\n")
    path = write_gz(tmp_path / "bad.csv.gz", criteo_line() + long + short)
    with pytest.raises(DataError, match=r"bad.csv.gz line 2: expected 40 tab-separated columns .*found 41"):
        read_criteo(path)


def test_invalid_utf8_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(criteo_line().encode() + criteo_line(C2="\xff").encode("latin-1"))
    with pytest.raises(DataError, match=r"bad.txt line 2: not valid UTF-8"):
        read_criteo(path)


def test_unreadable_files_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match=r"missing.csv.gz: file not found"):
        read_criteo(tmp_path / "missing.csv.gz")
    fake = tmp_path / "plain.csv.gz"
    fake.write_text(criteo_line())
    with pytest.raises(DataError, match=r"plain.csv.gz: not a gzip file"):
        read_criteo(fake)
    truncated = tmp_path / "cut.csv.gz"
    truncated.write_bytes(gzip.compress(criteo_line().encode() * 50)[:-20])
    with pytest.raises(DataError, match=r"cut.csv.gz: corrupt or truncated"):
        read_criteo(truncated)
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.csv: empty file"):
        read_criteo(empty)
    with pytest.raises(DataError, match=r"empty.csv.gz: empty file"):
        read_criteo(write_gz(tmp_path / "empty.csv.gz", ""))
    with pytest.raises(DataError, match=r"blank.csv: no data rows"):
        read_criteo(write_text(tmp_path / "blank.csv", "\n\n"))

    def deny(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    locked = write_gz(tmp_path / "locked.csv.gz", criteo_line())
    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(DataError, match=r"locked.csv.gz: cannot read the file: permission denied"):
        read_criteo(locked)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs file permissions (not root)")
def test_file_without_read_permission(tmp_path: Path) -> None:
    locked = write_gz(tmp_path / "locked.csv.gz", criteo_line())
    locked.chmod(0)
    try:
        with pytest.raises(DataError, match=r"locked.csv.gz: cannot read the file: permission denied"):
            read_criteo(locked)
    finally:
        locked.chmod(0o600)


# ---------------------------------------------------------------------------------------------------
# Avazu

AVAZU_DISTINCT = {  # README "Distinct values per column over all 8,999 rows"
    "C1": 6, "banner_pos": 4, "site_id": 361, "site_domain": 301, "site_category": 14, "app_id": 303,
    "app_domain": 29, "app_category": 14, "device_id": 975, "device_ip": 6678, "device_model": 1111,
    "device_type": 4, "device_conn_type": 4, "C14": 259, "C15": 4, "C16": 5, "C17": 109, "C18": 4,
    "C19": 32, "C20": 103, "C21": 28,
}  # fmt: skip
AVAZU_HEADER = (
    "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,device_id,"
    "device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21\n"
)


def avazu_line(click: str = "0", hour: str = "14102100", row_id: str = "1") -> str:
    return f"{row_id},{click},{hour}," + ",".join(["a"] * 21) + "\n"


def test_avazu_shared_sample(dataset_dir) -> None:
    root = dataset_dir("avazu-sample").parent
    raw = AvazuReader(AvazuOptions(), root).read()
    check_contract(raw)
    assert raw.categorical[:3] == ["hour_of_day", "weekday", "is_weekend"] and len(raw.categorical) == 24
    assert "id" not in raw.categorical and "click" not in raw.categorical
    # train.csv.gz has a header, dev and test have none: all data rows are read, no header row as data
    assert split_sizes(raw) == {"train": (8087, 1397), "valid": (480, 86), "test": (432, 80)}
    assert distinct_counts(raw, list(AVAZU_DISTINCT)) == AVAZU_DISTINCT
    everything = pl.concat(list(raw.splits.values()))
    # all rows are from hour 14102100: 2014-10-21, a Tuesday, 00h
    assert everything.select("hour_of_day", "weekday", "is_weekend").unique().rows() == [("00", "Tuesday", "0")]


def test_avazu_keeps_raw_hour_on_request(dataset_dir) -> None:
    root = dataset_dir("avazu-sample").parent
    raw = AvazuReader(AvazuOptions(split_hour=False, nrows=10), root).read()
    assert raw.categorical[0] == "hour" and len(raw.categorical) == 22
    assert {name: frame.height for name, frame in raw.splits.items()} == {
        "train": 10,
        "valid": 10,
        "test": 10,
    }
    assert raw.splits["train"]["hour"].unique().to_list() == ["14102100"]


def test_avazu_hour_is_split_into_day_fields(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    # 2014-10-25 is a Saturday, 2014-10-26 a Sunday, 2014-10-27 a Monday
    path.write_text(
        AVAZU_HEADER + avazu_line(hour="14102523") + avazu_line("1", "14102600") + avazu_line(hour="14102707")
    )
    frame = AvazuReader(AvazuOptions(path="a.csv"), tmp_path).read().splits["all"]
    assert frame.select("hour_of_day", "weekday", "is_weekend").rows() == [
        ("23", "Saturday", "1"),
        ("00", "Sunday", "1"),
        ("07", "Monday", "0"),
    ]
    assert frame[LABEL].to_list() == [0.0, 1.0, 0.0]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            AVAZU_HEADER + avazu_line() + avazu_line(hour="14102124"),
            r"a.csv line 3: hour '14102124' is not YYMMDDHH",
        ),
        (
            AVAZU_HEADER + avazu_line() + avazu_line(hour="141321"),
            r"a.csv line 3: hour '141321' is not YYMMDDHH",
        ),
        (avazu_line() + avazu_line(click="yes"), r"a.csv line 2: label 'yes' is not one of 0, 1"),
        (
            AVAZU_HEADER + avazu_line() + "1,0,14102100\n",
            r"a.csv line 3: expected 24 comma-separated columns, found 3",
        ),
        ("id,click,hour\n" + avazu_line(), r"a.csv line 1: expected the header"),
        (AVAZU_HEADER, r"a.csv: no data rows"),
    ],
)
def test_avazu_errors_name_file_and_line(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "a.csv").write_text(content)
    with pytest.raises(DataError, match=expected):
        AvazuReader(AvazuOptions(path="a.csv"), tmp_path).read()


# ---------------------------------------------------------------------------------------------------
# MovieLens


def test_movielens_100k_shared(dataset_dir) -> None:
    root = dataset_dir("movielens-100k").parent
    raw = MovieLens100KReader(MovieLens100KOptions(), root).read()
    check_contract(raw)
    assert raw.categorical == ["user_id", "item_id", "age", "gender", "occupation", "zip", "genres", "year"]
    assert split_sizes(raw) == {"all": (100_000, 55_375)}  # rating >= 4, counted with awk
    expected = {"user_id": 943, "item_id": 1682, "age": 61, "gender": 2, "occupation": 21, "zip": 795}
    assert distinct_counts(raw, list(expected)) == expected
    frame = raw.splits["all"]
    movies = frame.select("item_id", "genres", "year").unique().sort(pl.col("item_id").cast(pl.Int64))
    assert movies.row(0) == ("1", "Animation|Children's|Comedy", "1995")  # Toy Story
    assert movies.filter(pl.col("item_id") == "267").row(0) == ("267", "unknown", None)  # no release date
    # the timestamp does not leak: item ids stay within 1..1682 and years are plausible
    assert frame["item_id"].cast(pl.Int64).max() == 1682
    assert frame["year"].drop_nulls().cast(pl.Int64).is_between(1900, 1999).all()


def test_movielens_100k_threshold_and_field_choice(dataset_dir) -> None:
    root = dataset_dir("movielens-100k").parent
    options = MovieLens100KOptions(label_threshold=1, user_fields=["gender"], item_fields=[])
    raw = MovieLens100KReader(options, root).read()
    assert raw.categorical == ["user_id", "item_id", "gender"]
    assert split_sizes(raw) == {"all": (100_000, 100_000)}
    strict = MovieLens100KReader(MovieLens100KOptions(label_threshold=5, users=None), root).read()
    assert strict.categorical == ["user_id", "item_id", "genres", "year"]
    assert 0 < split_sizes(strict)["all"][1] < 55_375


def test_movielens_1m_with_a_small_ratings_file(dataset_dir, tmp_path: Path) -> None:
    root = dataset_dir("movielens-1m-metadata").parent
    ratings = tmp_path / "ratings.dat"
    ratings.write_text("1::1::5::978300760\n6040::3952::3::978300761\n99999::1::4::978300762\n")
    reader = MovieLens1MReader(MovieLens1MOptions(ratings=str(ratings)), root)
    raw = reader.read()
    check_contract(raw)
    assert raw.categorical == ["user_id", "item_id", "age", "gender", "occupation", "zip", "genres", "year"]
    frame = raw.splits["all"]
    assert frame.row(0) == ("1", "1", "1", "F", "10", "48067", "Animation|Children's|Comedy", "1995", 1.0)
    assert frame.row(1) == ("6040", "3952", "25", "M", "6", "11106", "Drama|Thriller", "2000", 0.0)
    assert frame.row(2)[2:6] == (None, None, None, None)  # user not in users.dat: side fields missing
    assert reader.sources() == [ratings, root / MovieLens1MOptions.model_fields["users"].default,
                                root / MovieLens1MOptions.model_fields["movies"].default]  # fmt: skip

    users = reader.read_users(root / "movielens-1m-metadata/users.dat.gz")
    expected = {"gender": 2, "age": 7, "occupation": 21, "zip": 3439}  # README
    assert users.height == 6040 and {name: users[name].n_unique() for name in expected} == expected
    movies = reader.read_movies(root / "movielens-1m-metadata/movies.dat.gz")
    assert movies.height == 3883
    assert movies["genres"].str.split("|").explode().n_unique() == 18  # README: 18 genres


def test_movielens_1m_errors(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("1::1::5::0\n1::2::good::0\n")
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n1::M::25::15::55117\n")
    (tmp_path / "movies.dat").write_text("1::Toy Story (1995)::Comedy\n2::Jumanji (1995)::Fantasy\n")
    options = {"ratings": "ratings.dat", "users": "users.dat", "movies": "movies.dat"}
    with pytest.raises(DataError, match=r"ratings.dat line 2: column 'rating' value 'good' is not a number"):
        MovieLens1MReader(MovieLens1MOptions(**options), tmp_path).read()
    (tmp_path / "ratings.dat").write_text("1::1::5::0\n1::2::3\n")
    with pytest.raises(DataError, match=r"ratings.dat line 2: expected 4 '::'-separated columns, found 3"):
        MovieLens1MReader(MovieLens1MOptions(**options), tmp_path).read()
    (tmp_path / "ratings.dat").write_text("1::1::5::0\n")
    with pytest.raises(DataError, match=r"users.dat line 3: user_id '1' appears a second time"):
        MovieLens1MReader(MovieLens1MOptions(**options), tmp_path).read()


def test_movielens_latest_shared(dataset_dir) -> None:
    root = dataset_dir("movielens-latest-small").parent
    reader = MovieLensLatestReader(MovieLensLatestOptions(), root)
    raw = reader.read()
    check_contract(raw)
    assert raw.categorical == ["user_id", "item_id", "genres", "year"]
    assert split_sizes(raw) == {"all": (100_836, 48_580)}  # rating >= 4, counted with awk
    assert distinct_counts(raw, ["user_id", "item_id"]) == {"user_id": 610, "item_id": 9724}
    movies = reader.read_movies(root / "movielens-latest-small/movies.csv.gz")
    assert movies.height == 9742
    # README: 20 genre labels, one of them "(no genres listed)", which is read as missing (34 movies)
    assert movies["genres"].null_count() == 34
    assert movies["genres"].str.split("|").explode().drop_nulls().n_unique() == 19
    assert movies.filter(pl.col("item_id") == "1")["year"].item() == "1995"


# ---------------------------------------------------------------------------------------------------
# Frappe

FRAPPE_DISTINCT = {  # README "Distinct values per column in frappe.csv" (without cnt)
    "user": 957, "item": 4082, "daytime": 7, "weekday": 7, "isweekend": 2, "homework": 3, "cost": 2,
    "weather": 9, "country": 80, "city": 233,
}  # fmt: skip
FRAPPE_LOG_ROWS = 96_203


@cache
def frappe_frame(root: str, seed: int) -> pl.DataFrame:
    raw = FrappeReader(FrappeOptions(seed=seed), Path(root)).read()
    check_contract(raw)
    return raw.splits["all"]


def test_frappe_builder_from_raw_log(dataset_dir) -> None:
    root = str(dataset_dir("frappe").parent)
    frame = frappe_frame(root, 2026)
    assert frame.columns == [*FRAPPE_FIELDS, LABEL]
    assert frame.height == 3 * FRAPPE_LOG_ROWS == 288_609
    assert int(frame[LABEL].sum()) == FRAPPE_LOG_ROWS
    positives = frame.filter(pl.col(LABEL) == 1.0)
    negatives = frame.filter(pl.col(LABEL) == 0.0)
    assert {name: positives[name].n_unique() for name in FRAPPE_FIELDS} == FRAPPE_DISTINCT
    assert positives.unique().height == 96_195  # README: 96,195 distinct (user, item, context) tuples
    user_context = ["user", *CONTEXT_FIELDS]
    # every negative keeps the user and context of a positive ...
    assert negatives.join(positives.select(user_context).unique(), on=user_context, how="anti").height == 0
    # ... and is not itself a positive tuple
    assert negatives.join(positives.select(FRAPPE_FIELDS).unique(), on=FRAPPE_FIELDS, how="semi").height == 0
    assert set(negatives["item"].unique()) <= set(positives["item"].unique())


def test_frappe_builder_is_seeded(dataset_dir) -> None:
    root = str(dataset_dir("frappe").parent)
    first = frappe_frame(root, 2026)
    again = FrappeReader(FrappeOptions(), Path(root)).read().splits["all"]
    assert again.equals(first)
    other = frappe_frame(root, 7)
    assert not other.equals(first)
    assert other.filter(pl.col(LABEL) == 1.0).equals(first.filter(pl.col(LABEL) == 1.0))


FRAPPE_LOG_HEADER = "user\titem\tcnt\tdaytime\tweekday\tisweekend\thomework\tcost\tweather\tcountry\tcity\n"


def write_frappe_zip(path: Path, rows: list[str], member: str = "Mobile_Frappe/frappe/frappe.csv") -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, FRAPPE_LOG_HEADER + "".join(rows))


def test_frappe_builder_on_a_tiny_log(tmp_path: Path) -> None:
    context = "morning\tsunday\tweekend\tunknown\tfree\tsunny\tSpain\t0\n"
    rows = [f"u1\ti{item}\t1\t{context}" for item in (1, 2)] + [f"u2\ti3\t5\t{context}"]
    write_frappe_zip(tmp_path / "log.zip", rows)
    options = FrappeOptions(path="log.zip", negatives_per_positive=5, seed=1)
    frame = FrappeReader(options, tmp_path).read().splits["all"]
    assert frame.height == 3 * 6 and int(frame[LABEL].sum()) == 3
    negatives = frame.filter(pl.col(LABEL) == 0.0)
    # user u1 used i1 and i2 in this context, so only i3 is left for it; u2 gets i1 or i2
    assert set(negatives.filter(pl.col("user") == "u1")["item"]) == {"i3"}
    assert set(negatives.filter(pl.col("user") == "u2")["item"]) <= {"i1", "i2"}
    only_positives = FrappeReader(FrappeOptions(path="log.zip", negatives_per_positive=0), tmp_path).read()
    assert only_positives.splits["all"].height == 3


def test_frappe_builder_errors(tmp_path: Path) -> None:
    context = "morning\tsunday\tweekend\tunknown\tfree\tsunny\tSpain\t0\n"
    write_frappe_zip(tmp_path / "full.zip", [f"u1\ti1\t1\t{context}"])
    with pytest.raises(DataError, match="used all 1 items"):
        FrappeReader(FrappeOptions(path="full.zip"), tmp_path).read()
    write_frappe_zip(tmp_path / "other.zip", [f"u1\ti1\t1\t{context}"], member="frappe.csv")
    with pytest.raises(DataError, match=r"other.zip: no member 'Mobile_Frappe/frappe/frappe.csv'; members: 'frappe"):
        FrappeReader(FrappeOptions(path="other.zip"), tmp_path).read()
    write_frappe_zip(tmp_path / "short.zip", [f"u1\ti1\t1\t{context}", "u2\ti2\t1\tmorning\n"])
    with pytest.raises(DataError, match=r"short.zip:Mobile_Frappe/frappe/frappe.csv line 3: expected 11 tab-sep"):
        FrappeReader(FrappeOptions(path="short.zip"), tmp_path).read()
    (tmp_path / "fake.zip").write_text("not a zip")
    with pytest.raises(DataError, match=r"fake.zip: not a zip file"):
        FrappeReader(FrappeOptions(path="fake.zip"), tmp_path).read()


# ---------------------------------------------------------------------------------------------------
# libFM: Frappe splits and the generic reader

FRAPPE_INDEX_RANGES = {  # README: index block of each field in the NFM libFM files
    "user": (0, 956), "item": (957, 5038), "daytime": (5039, 5045), "weekday": (5046, 5052),
    "isweekend": (5053, 5054), "homework": (5055, 5057), "cost": (5058, 5059), "weather": (5060, 5068),
    "country": (5069, 5148), "city": (5149, 5381),
}  # fmt: skip


def test_frappe_libfm_shared_splits(dataset_dir) -> None:
    root = dataset_dir("frappe").parent
    raw = FrappeLibFMReader(FrappeLibFMOptions(), root).read()
    check_contract(raw)
    assert raw.categorical == FRAPPE_FIELDS
    assert split_sizes(raw) == {"valid": (57_722, 19_063), "test": (28_860, 9_536)}
    frame = pl.concat(list(raw.splits.values()))
    # Each position holds indices of its own field's block. (The README calls the blocks "observed", but
    # valid+test reach only user 954 and country 5146 of blocks ending at 956 and 5148; awk agrees.)
    for name, (low, high) in FRAPPE_INDEX_RANGES.items():
        index = frame[name].cast(pl.Int64)
        assert index.is_between(low, high).all(), name
        assert index.n_unique() <= high - low + 1
    assert frame["item"].n_unique() == 4082 and frame["city"].cast(pl.Int64).max() == 5381


def test_generic_libfm_names_fields_by_position(dataset_dir) -> None:
    root = dataset_dir("frappe").parent
    raw = LibFMReader(LibFMOptions(path="frappe/nfm.frappe.test.libfm.gz", nrows=3), root).read()
    check_contract(raw)
    assert raw.categorical == [f"field_{position}" for position in range(1, 11)]
    first = raw.splits["all"].row(0)
    assert first == ("204", "4798", "5041", "5046", "5053", "5055", "5058", "5060", "5073", "5183", 0.0)


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ("1 3:1\n", r"line 2: expected 3 space-separated columns \(label and 2 index:value pairs\), found 2"),
        ("1 3:1 4:2\n", r"line 2: pair 2 is '4:2', expected '<index>:1'"),
        ("1 x:1 4:1\n", r"line 2: pair 1 is 'x:1'"),
        ("1 -3:1 4:1\n", r"line 2: pair 1 is '-3:1'"),
        ("1 3:1 4:1:1\n", r"line 2: pair 2 is '4:1:1'"),
        ("2 3:1 4:1\n", r"line 2: label '2' is not one of 0, -1, 1, \+1"),
    ],
)
def test_libfm_errors_name_file_and_line(tmp_path: Path, bad_line: str, expected: str) -> None:
    write_gz(tmp_path / "f.libfm.gz", "-1 1:1 2:1\n" + bad_line)
    with pytest.raises(DataError, match="f.libfm.gz " + expected):
        LibFMReader(LibFMOptions(path="f.libfm.gz", fields=["a", "b"]), tmp_path).read()


def test_libfm_labels_minus_one_and_zero_are_negative(tmp_path: Path) -> None:
    write_gz(tmp_path / "f.gz", "-1 1:1 2:1\n0 1:1 3:1\n+1 4:1 2:1\n1 07:1 2:1.0\n")
    frame = LibFMReader(LibFMOptions(path="f.gz", fields=["a", "b"]), tmp_path).read().splits["all"]
    assert frame.rows() == [("1", "2", 0.0), ("1", "3", 0.0), ("4", "2", 1.0), ("7", "2", 1.0)]


# ---------------------------------------------------------------------------------------------------
# iPinYou

IPINYOU_DISTINCT = {  # README: distinct values seen in train+test, fields in position order
    "weekday": 2, "hour": 23, "useragent": 9, "IP": 19270, "region": 34, "city": 358, "adexchange": 1,
    "domain": 278, "slotid": 301, "slotwidth": 1, "slotheight": 1, "slotvisibility": 3, "slotformat": 1,
    "creative": 2, "advertiser": 1, "slotprice": 4,
}  # fmt: skip


def test_ipinyou_shared_sample(dataset_dir) -> None:
    root = dataset_dir("ipinyou-sample").parent
    raw = IPinYouReader(IPinYouOptions(), root).read()
    check_contract(raw)
    assert raw.categorical == list(IPINYOU_DISTINCT)
    assert split_sizes(raw) == {"train": (26_773, 255), "test": (21_150, 50)}
    assert distinct_counts(raw, raw.categorical) == IPINYOU_DISTINCT
    train = raw.splits["train"]
    assert train["slotprice"].unique().sort().to_list() <= ["1-10", "101+", "11-50", "51-100", "other"]
    assert train["IP"].str.ends_with(".*").all()


def test_ipinyou_decodes_and_rejects_unknown_indices(tmp_path: Path) -> None:
    write_gz(tmp_path / "featindex.txt.gz", "a:other\t0\na:x\t1\nb:other\t2\nb:y:z\t3\n")
    write_gz(tmp_path / "train.txt.gz", "0 1:1 3:1\n1 0:1 2:1\n")
    options = {"files": {"train": "train.txt.gz"}, "featindex": "featindex.txt.gz"}
    raw = IPinYouReader(IPinYouOptions(**options), tmp_path).read()
    assert raw.categorical == ["a", "b"]
    assert raw.splits["train"].rows() == [("x", "y:z", 0.0), ("other", "other", 1.0)]

    write_gz(tmp_path / "train.txt.gz", "0 1:1 3:1\n1 0:1 9:1\n")
    with pytest.raises(DataError, match=r"train.txt.gz line 2: index 9 \(pair 2\) is not in featindex.txt.gz"):
        IPinYouReader(IPinYouOptions(**options), tmp_path).read()
    write_gz(tmp_path / "train.txt.gz", "0 1:1 3:1\n1 0:1 1:1\n")
    with pytest.raises(DataError, match=r"train.txt.gz line 2: index 1 \(pair 2\) belongs to field 'a'"):
        IPinYouReader(IPinYouOptions(**options), tmp_path).read()
    write_gz(tmp_path / "featindex.txt.gz", "a:other\t0\na:x\t1\nb:other\t1\n")
    with pytest.raises(DataError, match=r"featindex.txt.gz line 3: index 1 is defined a second time"):
        IPinYouReader(IPinYouOptions(**options), tmp_path).read()


# ---------------------------------------------------------------------------------------------------
# generic tables


def test_table_reads_shared_csv_with_threshold(dataset_dir) -> None:
    root = dataset_dir("movielens-latest-small").parent
    options = TableOptions(
        path="movielens-latest-small/ratings.csv.gz",
        categorical=["userId", "movieId"],
        numeric=["timestamp"],
        label="rating",
        label_threshold=4,
    )
    raw = TableReader(options, root).read()
    check_contract(raw)
    assert split_sizes(raw) == {"all": (100_836, 48_580)}
    assert distinct_counts(raw, ["userId", "movieId"]) == {"userId": 610, "movieId": 9724}


def test_table_reads_tsv_without_header(dataset_dir) -> None:
    root = dataset_dir("movielens-100k").parent
    options = TableOptions(
        path="movielens-100k/u.data.gz",
        format="tsv",
        has_header=False,
        columns=["user", "item", "rating", "time"],
        categorical=["user", "item"],
        label="rating",
        label_threshold=4,
        nrows=1000,
    )
    raw = TableReader(options, root).read()
    check_contract(raw)
    assert raw.splits["all"].height == 1000
    assert raw.splits["all"].row(0) == ("196", "242", 0.0)  # first line of u.data: 196 242 3 881250949


def test_table_quoted_csv_and_parquet(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text('city,"note, long",n,y\nParis,"a,b",1.5,1\nRome,"two\nlines",,0\n')
    raw = TableReader(
        TableOptions(path="t.csv", categorical=["city", "note, long"], numeric=["n"], label="y"), tmp_path
    ).read()
    check_contract(raw)
    assert raw.splits["all"].rows() == [("Paris", "a,b", 1.5, 1.0), ("Rome", "two\nlines", None, 0.0)]
    pl.DataFrame({"k": [3, 4], "n": [0.5, None], "y": [True, False]}).write_parquet(tmp_path / "t.parquet")
    raw = TableReader(TableOptions(path="t.parquet", categorical=["k"], numeric=["n"], label="y"), tmp_path).read()
    check_contract(raw)
    assert raw.splits["all"].rows() == [("3", 0.5, 1.0), ("4", None, 0.0)]


@pytest.mark.parametrize(
    ("content", "options", "expected"),
    [
        (
            "a,b,y\n1,2,1\n",
            {"categorical": ["a", "zz"]},
            r"t.csv line 1 \(the header\): categorical column 'zz' not found; available columns: 'a', 'b', 'y'",
        ),
        ("a,b,y\n1,2,1\n", {"label": "click"}, r"t.csv line 1 \(the header\): label column 'click' not found"),
        ("a,b,y\n1,2,1\n1,2,3\n", {}, r"t.csv line 3: label column 'y' value 3.0 is not 0 or 1"),
        ("a,b,y\n1,2,1\n1,2,\n", {}, r"t.csv line 3: label column 'y' is empty"),
        ("a,b,y\n1,2,1\n1,x,0\n", {"numeric": ["b"]}, r"t.csv line 3: column 'b' value 'x' is not a number"),
        ("a,b,y\n1,2,1\n1,2\n", {}, r"t.csv line 3: expected 3 comma-separated columns, found 2"),
        ('a,b,y\n1,2,1\n"x,y",2\n', {}, r"t.csv line 3: expected 3 comma-separated columns, found 2"),
        ("a,a,y\n1,2,1\n", {}, r"t.csv line 1: the header names column 'a' twice"),
    ],
)
def test_table_errors_name_file_line_and_column(tmp_path: Path, content: str, options: dict, expected: str) -> None:
    (tmp_path / "t.csv").write_text(content)
    settings = {"path": "t.csv", "categorical": ["a"], "label": "y", **options}
    with pytest.raises(DataError, match=expected):
        TableReader(TableOptions(**settings), tmp_path).read()


def test_table_parquet_unknown_column(tmp_path: Path) -> None:
    pl.DataFrame({"k": [1], "y": [1]}).write_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"t.parquet: numeric column 'n' not found; available columns: 'k', 'y'"):
        TableReader(TableOptions(path="t.parquet", categorical=["k"], numeric=["n"], label="y"), tmp_path).read()


def test_table_ignores_a_utf8_byte_order_mark(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_bytes(b"\xef\xbb\xbfk,y\nx,1\n")
    raw = TableReader(TableOptions(path="t.csv", categorical=["k"], label="y"), tmp_path).read()
    assert raw.splits["all"].rows() == [("x", 1.0)]


ADULT = (  # Adult census rows as adult.data writes them: ", " between fields, "?" for missing, a text label
    "39, State-gov, 77516, <=50K\n"
    "50, ?, 83311, >50K\n"
    "?, Private, 215646, <=50K\n"
    "53, Private, ?, >50K\n"
    "28, ?, 338409, <=50K\n"
)
ADULT_OPTIONS = {
    "has_header": False,
    "columns": ["age", "workclass", "fnlwgt", "income"],
    "categorical": ["workclass"],
    "numeric": ["age", "fnlwgt"],
    "label": "income",
}


@pytest.fixture
def embdim_log(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    """embdim's log records from INFO up (the CLI may have stopped them from reaching the root logger)."""
    import logging

    monkeypatch.setattr(logging.getLogger("embdim"), "propagate", True)
    caplog.set_level(logging.INFO, logger="embdim")
    return caplog


def test_table_label_positive_maps_text_labels_to_one_and_the_rest_to_zero(tmp_path: Path) -> None:
    (tmp_path / "adult.csv").write_text(ADULT)
    options = TableOptions(path="adult.csv", label_positive=">50K", missing_values=["?"], **ADULT_OPTIONS)
    frame = TableReader(options, tmp_path).read().splits["all"]
    assert frame[LABEL].to_list() == [0.0, 1.0, 0.0, 1.0, 0.0]  # " >50K" is ">50K": labels compare stripped
    assert frame["workclass"].to_list() == [" State-gov", None, " Private", " Private", None]
    assert frame["age"].to_list() == [39.0, 50.0, None, 53.0, 28.0]
    assert frame["fnlwgt"].to_list() == [77516.0, 83311.0, 215646.0, None, 338409.0]


@pytest.mark.parametrize(
    ("positive", "expected"),
    [
        (1, [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]),  # a number matches every spelling of it
        ([2, 3], [0.0, 0.0, 1.0, 0.0, 1.0, 0.0]),
        ("1", [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]),  # text matches the text alone
        (["yes", "1.0"], [0.0, 1.0, 0.0, 0.0, 0.0, 1.0]),
    ],
)
def test_table_label_positive_compares_numbers_as_numbers_and_text_as_text(
    tmp_path: Path, positive: object, expected: list[float]
) -> None:
    (tmp_path / "t.csv").write_text("k,y\na,1\nb,1.0\nc,2\nd, 1 \ne,3\nf,yes\n")
    options = TableOptions(path="t.csv", categorical=["k"], label="y", label_positive=positive)
    reader = TableReader(options, tmp_path)
    assert reader.read().splits["all"][LABEL].to_list() == expected
    streamed = pl.concat(list(reader.chunked(2).sources[0].chunks()))
    assert streamed[LABEL].to_list() == expected


def test_table_label_positive_on_parquet_labels_of_any_type(tmp_path: Path) -> None:
    frame = pl.DataFrame({"k": ["a", "b", "c"], "n": [1, 0, 2], "s": ["x", "y", "x"], "b": [True, False, True]})
    frame.write_parquet(tmp_path / "t.parquet")
    for label, positive, expected in (("n", [2], [0, 0, 1]), ("s", "x", [1, 0, 1]), ("b", 1, [1, 0, 1])):
        options = TableOptions(path="t.parquet", categorical=["k"], label=label, label_positive=positive)
        assert TableReader(options, tmp_path).read().splits["all"][LABEL].to_list() == expected, label


def test_table_label_positive_logs_its_counts_and_warns_when_no_label_matches(tmp_path: Path, embdim_log) -> None:
    (tmp_path / "adult.csv").write_text(ADULT)
    options = {"path": "adult.csv", "missing_values": ["?"], **ADULT_OPTIONS}
    TableReader(TableOptions(label_positive=">50K", **options), tmp_path).read()
    assert [(r.levelname, r.getMessage()) for r in embdim_log.records] == [
        ("INFO", "adult.csv: label_positive ['>50K']: rows labelled 1: 2, labelled 0: 3")
    ]
    embdim_log.clear()
    TableReader(TableOptions(label_positive=">50K.", **options), tmp_path).read()  # adult.test's spelling
    warning = [r.getMessage() for r in embdim_log.records if r.levelname == "WARNING"]
    assert warning == [
        "adult.csv: no label is one of label_positive ['>50K.'] (all 5 rows are 0); labels read include '<=50K', '>50K'"
    ]


def test_table_label_positive_keeps_an_empty_label_an_error(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("k,y\na,x\nb,\n")
    with pytest.raises(DataError, match=r"t.csv line 3: label column 'y' is empty"):
        TableReader(TableOptions(path="t.csv", categorical=["k"], label="y", label_positive="x"), tmp_path).read()
    (tmp_path / "t.csv").write_text("k,y\na,x\nb,  \n")
    with pytest.raises(DataError, match=r"t.csv line 3: label column 'y' is empty"):
        TableReader(TableOptions(path="t.csv", categorical=["k"], label="y", label_positive="x"), tmp_path).read()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"label_positive": "x", "label_threshold": 1}, r"either 'label_threshold' or 'label_positive', not both"),
        ({"label_positive": []}, r"'label_positive' is empty"),
        ({"label_positive": True}, r"true is a boolean here; quote it"),
        ({"label_positive": float("nan")}, r"label_positive"),
        ({"missing_values": {"nope": ["?"]}}, r"'missing_values' names 'nope', which is not a categorical or numeric"),
        ({"missing_values": {"y": ["?"]}}, r"'missing_values' names 'y', which is not a categorical or numeric"),
        ({"missing_values": [False]}, r"false is a boolean here"),
    ],
)
def test_table_label_and_missing_options_are_checked(options: dict, expected: str) -> None:
    with pytest.raises(ValidationError, match=expected):
        TableOptions(path="t.csv", categorical=["k"], numeric=["n"], label="y", **options)


def test_conflicting_label_options_are_a_config_error_naming_both_keys(tmp_path: Path) -> None:
    from embdim.config import load_config
    from embdim.errors import ConfigError

    dataset = {"name": "t", "reader": "table", "options": {"path": "t.csv", "categorical": ["k"], "label": "y"}}
    dataset["options"].update(label_threshold=1, label_positive=">50K")
    (tmp_path / "run.yaml").write_text(yaml_dump({"name": "r", "dataset": dataset, "model": "fm", "method": "full"}))
    with pytest.raises(ConfigError, match=r"dataset.options.*'label_threshold' or 'label_positive', not both"):
        load_config(tmp_path / "run.yaml")


def yaml_dump(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data)


def test_table_missing_values_read_as_empty_fields(tmp_path: Path) -> None:
    with_tokens = "k,city,n,y\na,?,1.5,1\n?,Rome,NA,0\nc, ? ,?,1\nNA,NA,-1,0\n"
    with_empty = "k,city,n,y\na,,1.5,1\n,Rome,,0\nc,,,1\n,,,0\n"
    (tmp_path / "tokens.csv").write_text(with_tokens)
    (tmp_path / "empty.csv").write_text(with_empty)
    settings = {"categorical": ["k", "city"], "numeric": ["n"], "label": "y"}
    empty = TableReader(TableOptions(path="empty.csv", **settings), tmp_path).read().splits["all"]
    for missing in (["?", "NA", -1], {"k": ["?", "NA"], "city": ["?", "NA"], "n": ["NA", "?", -1.0]}):
        options = TableOptions(path="tokens.csv", missing_values=missing, **settings)
        frame = TableReader(options, tmp_path).read().splits["all"]
        assert frame.equals(empty), missing
        streamed = pl.concat(list(TableReader(options, tmp_path).chunked(3).sources[0].chunks()))
        assert streamed.equals(empty), missing


def test_table_missing_values_of_a_column_leave_the_others_alone(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("k,city,n,y\nNA,NA,1,1\nb,Rome,NA,0\n")
    settings = {"path": "t.csv", "categorical": ["k", "city"], "numeric": ["n"], "label": "y"}
    frame = TableReader(TableOptions(missing_values={"city": ["NA"], "n": ["NA"]}, **settings), tmp_path).read()
    assert frame.splits["all"].rows() == [("NA", None, 1.0, 1.0), ("b", "Rome", None, 0.0)]
    with pytest.raises(DataError, match=r"t.csv line 3: column 'n' value 'NA' is not a number"):
        TableReader(TableOptions(missing_values={"city": ["NA"]}, **settings), tmp_path).read()


def test_a_missing_token_becomes_the_missing_category_after_encoding(tmp_path: Path) -> None:
    from embdim.data.encoder import MISSING_TOKEN, OOV_ID, Encoder

    (tmp_path / "t.csv").write_text("city,n,y\nParis,1,1\n?,2,0\nRome,?,1\n,3,0\nParis,?,1\n")
    options = TableOptions(path="t.csv", categorical=["city"], numeric=["n"], label="y", missing_values=["?"])
    frame = TableReader(options, tmp_path).read().splits["all"]
    encoder = Encoder(numeric="both").fit(frame, ["city"], ["n"])
    ids, dense = encoder.transform(frame)
    missing_city = encoder.vocab_["city"][MISSING_TOKEN]
    assert missing_city != OOV_ID and ids[:, 0].tolist()[1] == ids[:, 0].tolist()[3] == missing_city
    missing_n = encoder.vocab_["n"][MISSING_TOKEN]
    assert ids[2, 1] == ids[4, 1] == missing_n and dense[:, 0].tolist() == [1.0, 2.0, 0.0, 3.0, 0.0]


def test_table_missing_values_on_parquet_columns_of_any_type(tmp_path: Path) -> None:
    frame = pl.DataFrame({"k": [1, -1, 3], "s": ["a", "?", " ? "], "n": [0.5, -1.0, 2.0], "y": [0, 1, 0]})
    frame.write_parquet(tmp_path / "t.parquet")
    options = TableOptions(path="t.parquet", categorical=["k", "s"], numeric=["n"], label="y", missing_values=["?", -1])
    assert TableReader(options, tmp_path).read().splits["all"].rows() == [
        ("1", "a", 0.5, 0.0),
        (None, None, None, 1.0),
        ("3", None, 2.0, 0.0),
    ]


# ---------------------------------------------------------------------------------------------------
# odd bytes, line ends, archives


def test_cr_only_crlf_and_lf_line_ends_read_alike(tmp_path: Path) -> None:
    text = "".join(criteo_line(str(i % 2), I1=str(i)) for i in range(6))
    frames = {}
    for name, end in (("lf", "\n"), ("crlf", "\r\n"), ("cr", "\r")):
        frames[name] = read_criteo(write_text(tmp_path / f"{name}.txt", text.replace("\n", end))).splits["all"]
    assert frames["cr"].equals(frames["lf"]) and frames["crlf"].equals(frames["lf"])
    (tmp_path / "cr.gz").write_bytes(gzip.compress(text.replace("\n", "\r").encode()))
    limited = CriteoReader(CriteoOptions(path="cr.gz", nrows=4), tmp_path).read().splits["all"]
    assert limited["I1"].to_list() == [0.0, 1.0, 2.0, 3.0]  # nrows counts CR-ended lines too


def test_nul_bytes_are_rejected_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "nul.txt"
    path.write_bytes((criteo_line() * 2 + criteo_line(C4="a\x00b")).encode())
    with pytest.raises(DataError, match=r"nul.txt line 3: holds a NUL byte"):
        read_criteo(path)


def test_a_utf8_bom_before_latin1_text_is_dropped(tmp_path: Path) -> None:
    (tmp_path / "u.user").write_bytes(b"\xef\xbb\xbf1|24|M|technician|85711\n2|53|F|\xe9crivain|94043\n")
    users = MovieLens100KReader(MovieLens100KOptions(), tmp_path).read_users(tmp_path / "u.user")
    assert users["user_id"].to_list() == ["1", "2"] and users["occupation"][1] == "écrivain"


def test_quoted_empty_fields_are_null_and_stray_quotes_are_text(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text('k,note,y\n"",x,1\nb,"",0\nc,A"B,1\n"d","say ""hi""",0\n')
    raw = TableReader(TableOptions(path="t.csv", categorical=["k", "note"], label="y"), tmp_path).read()
    check_contract(raw)
    assert raw.splits["all"].rows() == [(None, "x", 1.0), ("b", None, 0.0), ("c", 'A"B', 1.0), ("d", 'say "hi"', 0.0)]


def test_an_unclosed_quote_names_the_line_it_opens_on(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text('k,y\na,1\n"b,0\nc,1\nd,0\n')
    with pytest.raises(DataError, match=r"t.csv line 3: .*a quoted field opened here is not closed"):
        TableReader(TableOptions(path="t.csv", categorical=["k"], label="y"), tmp_path).read()


def test_a_quoted_field_of_a_megabyte_is_read(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(f'k,y\n"{"x" * 1_000_000}",1\n"b, c",0\n')
    frame = TableReader(TableOptions(path="t.csv", categorical=["k"], label="y"), tmp_path).read().splits["all"]
    assert frame["k"].str.len_chars().to_list() == [1_000_000, 4]


def test_parquet_columns_that_are_lists_structs_or_binary_name_the_option(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {"k": [[1, 2], [3]], "s": [{"a": 1}, {"a": 2}], "b": [b"x", b"y"], "c": ["u", "v"], "y": [0, 1]}
    )
    frame.write_parquet(tmp_path / "t.parquet")
    for column, role, kind in (("k", "categorical", "List"), ("s", "numeric", "Struct"), ("b", "categorical", "Bin")):
        options = {"categorical": [column]} if role == "categorical" else {"categorical": ["c"], "numeric": [column]}
        expected = rf"t.parquet: column '{column}' \(dataset.options.{role}\) has type {kind}"
        with pytest.raises(DataError, match=expected):
            TableReader(TableOptions(path="t.parquet", label="y", **options), tmp_path).read()


def test_a_repeated_header_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("k,y\na,1\nk,y\nb,0\n")
    with pytest.raises(DataError, match=r"t.csv line 3: repeats the header"):
        TableReader(TableOptions(path="t.csv", categorical=["k"], label="y"), tmp_path).read()


def test_featindex_with_a_huge_sparse_index(tmp_path: Path) -> None:
    write_gz(tmp_path / "featindex.txt.gz", "a:x\t0\na:z\t999999999999\nb:y\t5\n")
    write_gz(tmp_path / "train.txt.gz", "0 999999999999:1 5:1\n1 0:1 5:1\n")
    options = IPinYouOptions(files={"train": "train.txt.gz"}, featindex="featindex.txt.gz")
    assert IPinYouReader(options, tmp_path).read().splits["train"].rows() == [("z", "y", 0.0), ("x", "y", 1.0)]


def test_archive_problems_are_named(tmp_path: Path) -> None:
    data = criteo_line().encode() * 3
    packed = gzip.compress(data)
    broken = bytearray(packed)
    broken[-6] ^= 0xFF  # the CRC
    (tmp_path / "crc.gz").write_bytes(bytes(broken))
    with pytest.raises(DataError, match=r"crc.gz: corrupt gzip data \(CRC check failed\)"):
        read_criteo(tmp_path / "crc.gz")
    (tmp_path / "two.gz").write_bytes(gzip.compress(data[:50]) + gzip.compress(data[50:]))
    assert read_criteo(tmp_path / "two.gz").splits["all"].height == 3
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as archive:
        archive.writestr("a.txt", data)
        archive.writestr("b.txt", data)
    with pytest.raises(DataError, match=r"two.zip: a .zip source must hold exactly one file, this one holds 2: 'a"):
        read_criteo(tmp_path / "two.zip")
    zipfile.ZipFile(tmp_path / "none.zip", "w").close()
    with pytest.raises(DataError, match=r"none.zip: .* holds 0: none"):
        read_criteo(tmp_path / "none.zip")


def _count_lines_by_line(data: bytes) -> int | str:
    """What count_lines must give, from the file's lines as a binary stream yields them (cut after each
    LF): the count of lines less the trailing blank ones, or the name of the error."""
    lines = [line + b"\n" for line in data.split(b"\n")]
    lines[-1] = lines[-1][:-1]
    lines = [line for line in lines if line]
    count = blank_run = 0
    content = False
    for k, line in enumerate(lines):
        if not line.endswith(b"\n") and b"\r" in line.rstrip(b"\r"):
            return "NotStreamable"
        line = line[3:] if k == 0 and line.startswith(b"\xef\xbb\xbf") else line
        count += 1
        blank_run = blank_run + 1 if not line.strip(b"\r\n") else 0
        content = content or (not line.isspace() and bool(line))
    if not lines:
        return "empty"
    return count - blank_run if content else "no rows"


def test_lines_counted_in_blocks_match_a_count_line_by_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    from embdim.data.readers import _common
    from embdim.data.readers.base import NotStreamable

    rnd = random.Random(0)
    alphabet = [b"a", b" ", b"\r", b"\n", b"\n", b"\r\n", b"\xef\xbb\xbf"]
    path = tmp_path / "lines.txt"
    for case in range(800):
        data = b"".join(rnd.choice(alphabet) for _ in range(rnd.randrange(12)))
        path.write_bytes(data)
        monkeypatch.setattr(_common, "COUNT_BLOCK_BYTES", 1 + case % 5)  # blocks cut lines anywhere
        for max_lines in (None, 1000):  # in blocks, and line by line (a row limit)
            try:
                got: int | str = _common.count_lines(path, "lines.txt", max_lines=max_lines)
            except NotStreamable:
                got = "NotStreamable"
            except DataError as error:
                got = "empty" if "empty file" in str(error) else "no rows"
            assert got == _count_lines_by_line(data), (data, max_lines)
