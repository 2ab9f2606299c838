"""MovieLens ratings as CTR rows: ``user_id``, ``item_id`` and side fields, label = rating >= threshold.

Three layouts: ``movielens_100k`` (``u.data`` / ``u.user`` / ``u.item``), ``movielens_1m``
(``ratings.dat`` / ``users.dat`` / ``movies.dat``, ``::``-separated) and ``movielens_latest``
(``ratings.csv`` / ``movies.csv``, no user table). Each file path is its own option, so a side
table can come from elsewhere, or be left out (``None``: no fields from it). Genres are one
categorical value, the combination string (``"Action|Comedy"``). The timestamp is not used.
Ratings whose user or movie is missing from a side table get null side fields; no rating is
dropped (a rating below the threshold is a negative).

In scoring mode the ratings file may lack the rating: its lines are user, item and timestamp, or
user and item alone (ml-latest: a header naming those columns); its label is null.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import ClassVar, Literal

import polars as pl
from pydantic import Field, field_validator

from embdim.data.raw import LABEL, DataError, RawData
from embdim.data.readers._common import (
    ALL_SPLIT,
    UNLABELLED_HINT,
    RowLocator,
    TextFile,
    check_unique,
    display_name,
    expect_header,
    first_true,
    load_text,
    null_label,
    reject_repeated_header,
    split_columns,
    threshold_label,
)
from embdim.data.readers.base import Reader, ReaderOptions, scoring_path
from embdim.errors import shorten
from embdim.registry import READERS

USER_ID = "user_id"
ITEM_ID = "item_id"
RATING = "rating"
TIMESTAMP = "timestamp"
RATINGS_COLUMNS = [USER_ID, ITEM_ID, RATING, TIMESTAMP]
"""The columns of every layout's ratings file."""
UNLABELLED_RATINGS_COLUMNS = ([USER_ID, ITEM_ID, TIMESTAMP], [USER_ID, ITEM_ID])
"""The columns of a ratings file without ratings, read in scoring mode (told apart by their count)."""
UserField = Literal["age", "gender", "occupation", "zip"]
ItemField = Literal["genres", "year"]
USER_FIELDS: list[UserField] = ["age", "gender", "occupation", "zip"]
ITEM_FIELDS: list[ItemField] = ["genres", "year"]
DEFAULT_LABEL_THRESHOLD = 4.0
LATIN1 = "latin-1"
GENRE_SEPARATOR = "|"
YEAR_IN_TITLE = r"\((\d{4})\)\s*$"
"""The release year at the end of a title, e.g. ``Toy Story (1995)``."""
YEAR_AT_END = r"(\d{4})$"
"""The year of an ML-100K release date, e.g. ``01-Jan-1995``."""
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip
"""The 19 genre flags of ``u.item``, in column order (from the ML-100K README)."""
NO_GENRES = "(no genres listed)"
"""ml-latest's spelling of a movie without genres (read as null)."""


class MovieLensOptions(ReaderOptions):
    """Options shared by the MovieLens readers.

    Attributes:
        ratings: the ratings file (relative to the data root unless absolute).
        movies: the movie table; ``None``: no item side fields.
        label_threshold: label = 1 when the rating is at least this, else 0.
        user_fields: user side fields to include (needs a user table, ``users`` where there is one).
        item_fields: item side fields to include: ``genres`` and the release ``year``.
    """

    SOURCE_OPTIONS: ClassVar[frozenset[str]] = frozenset({"ratings", "movies"})

    ratings: str
    movies: str | None = None
    label_threshold: float = DEFAULT_LABEL_THRESHOLD
    user_fields: list[UserField] = Field(default_factory=lambda: list(USER_FIELDS))
    item_fields: list[ItemField] = Field(default_factory=lambda: list(ITEM_FIELDS))


class MovieLensReader(Reader):
    """Joins ratings with the side tables; subclasses parse the three files of their layout."""

    options: MovieLensOptions

    @abstractmethod
    def read_ratings(self, path: Path) -> pl.DataFrame:
        """Frame of ``user_id``, ``item_id`` (strings) and ``label``."""

    @abstractmethod
    def read_movies(self, path: Path) -> pl.DataFrame:
        """Frame of ``item_id`` and the item fields."""

    def read_users(self, path: Path) -> pl.DataFrame:
        """Frame of ``user_id`` and the user fields."""
        raise DataError(f"{type(self).__name__} has no user table")

    def side_files(self) -> dict[str, str | None]:
        """``{"users": ..., "movies": ...}`` as given in the options (``None``: not read)."""
        return {"users": getattr(self.options, "users", None), "movies": self.options.movies}

    def source_files(self) -> dict[str, Path]:
        files = {"ratings": self.options.ratings, **self.side_files()}
        return {role: self.path(name) for role, name in files.items() if name is not None}

    def sources(self) -> list[Path]:
        return list(self.source_files().values())

    def display(self, path: Path) -> str:
        return display_name(path, self.root)

    def read(self) -> RawData:
        paths = self.side_files()
        frame = self.read_ratings(self.path(self.options.ratings))
        categorical = [USER_ID, ITEM_ID]
        sides = (
            ("users", USER_ID, self.read_users, self.options.user_fields),
            ("movies", ITEM_ID, self.read_movies, self.options.item_fields),
        )
        for key, join_key, read_side, wanted in sides:
            side_name = paths[key]
            if side_name is None or not wanted:
                continue
            side = read_side(self.path(side_name)).select(join_key, *wanted)
            frame = frame.join(side, on=join_key, how="left", maintain_order="left")
            categorical += wanted
        return RawData(
            splits={ALL_SPLIT: frame.select(*categorical, LABEL)},
            categorical=categorical,
            sources=self.sources(),
        )

    def for_scoring(self, path: Path) -> Reader | None:
        return self.scoring_copy(ratings=scoring_path(path))

    def rating_label(self, frame: pl.DataFrame, locator: RowLocator) -> pl.Series:
        """``rating >= label_threshold`` as the ``Float32`` label."""
        return threshold_label(frame, RATING, self.options.label_threshold, locator).alias(LABEL)

    def ratings_columns(self, text: TextFile, separator: str) -> list[str]:
        """The columns of a ratings file that starts with ``text``: :data:`RATINGS_COLUMNS`, or in
        scoring mode one of :data:`UNLABELLED_RATINGS_COLUMNS` when its first line has as many."""
        if self.scoring:
            found = text.first_line_text().count(separator.encode()) + 1
            for columns in UNLABELLED_RATINGS_COLUMNS:
                if found == len(columns):
                    return list(columns)
        return list(RATINGS_COLUMNS)

    def ratings_frame(self, text: TextFile, separator: str, columns: list[str]) -> pl.DataFrame:
        """Ratings lines without header as ``user_id``, ``item_id`` and the label (null without ratings)."""
        hint = "" if RATING in columns else UNLABELLED_HINT
        frame = split_columns(text, columns, separator, hint=hint)
        label = self.rating_label(frame, text) if RATING in columns else null_label(frame.height)
        return frame.select(USER_ID, ITEM_ID, label)


def year_from(column: pl.Series, pattern: str) -> pl.Series:
    """The 4-digit year matched by ``pattern`` (null when absent)."""
    return column.str.extract(pattern, 1).alias("year")


# ---------------------------------------------------------------------------------------------------
# ML-100K


class MovieLens100KOptions(MovieLensOptions):
    """ML-100K file paths (default: the shared ``movielens-100k`` folder)."""

    SOURCE_OPTIONS: ClassVar[frozenset[str]] = MovieLensOptions.SOURCE_OPTIONS | {"users"}

    ratings: str = "movielens-100k/u.data.gz"
    users: str | None = "movielens-100k/u.user.gz"
    movies: str | None = "movielens-100k/u.item.gz"


@READERS.register("movielens_100k")
class MovieLens100KReader(MovieLensReader):
    """ML-100K: ``u.data`` (tab), ``u.user`` and ``u.item`` (``|``, latin-1, 19 genre flags)."""

    Options = MovieLens100KOptions
    options: MovieLens100KOptions

    def read_ratings(self, path: Path) -> pl.DataFrame:
        text = load_text(path, self.display(path))
        return self.ratings_frame(text, "\t", self.ratings_columns(text, "\t"))

    def read_users(self, path: Path) -> pl.DataFrame:
        text = load_text(path, self.display(path), encoding=LATIN1)
        frame = split_columns(text, [USER_ID, "age", "gender", "occupation", "zip"], "|")
        check_unique(frame, USER_ID, text)
        return frame

    def read_movies(self, path: Path) -> pl.DataFrame:
        text = load_text(path, self.display(path), encoding=LATIN1)
        columns = [ITEM_ID, "title", "release_date", "video_release_date", "url", *ML100K_GENRES]
        frame = split_columns(text, columns, "|", hint="5 movie columns and 19 genre flags")
        check_unique(frame, ITEM_ID, text)
        flags = frame.select(ML100K_GENRES)
        bad = flags.select(
            pl.any_horizontal([~pl.col(name).is_in(["0", "1"]).fill_null(False) for name in flags.columns])
        )
        row = first_true(bad.to_series())
        if row is not None:
            column = next(name for name in ML100K_GENRES if frame[name][row] not in ("0", "1"))
            value = shorten(repr(frame[column][row]))
            raise DataError(f"{text.where(row)}: genre flag {column!r} is {value}, expected 0 or 1")
        genres = pl.concat_str(
            [pl.when(pl.col(name) == "1").then(pl.lit(name)) for name in ML100K_GENRES],
            separator=GENRE_SEPARATOR,
            ignore_nulls=True,
        )
        return frame.select(
            ITEM_ID,
            pl.when(genres != "").then(genres).alias("genres"),
            year_from(frame["release_date"], YEAR_AT_END),
        )


# ---------------------------------------------------------------------------------------------------
# ML-1M


class MovieLens1MOptions(MovieLensOptions):
    """ML-1M file paths. ``ratings.dat`` is not in the shared data, so it has no default."""

    SOURCE_OPTIONS: ClassVar[frozenset[str]] = MovieLensOptions.SOURCE_OPTIONS | {"users"}

    ratings: str
    users: str | None = "movielens-1m-metadata/users.dat.gz"
    movies: str | None = "movielens-1m-metadata/movies.dat.gz"


ML1M_SEPARATOR = "::"


@READERS.register("movielens_1m")
class MovieLens1MReader(MovieLensReader):
    """ML-1M: ``ratings.dat``, ``users.dat`` (age bucket, gender, occupation code, zip), ``movies.dat``."""

    Options = MovieLens1MOptions
    options: MovieLens1MOptions

    def read_ratings(self, path: Path) -> pl.DataFrame:
        text = load_text(path, self.display(path), encoding=LATIN1)
        return self.ratings_frame(text, ML1M_SEPARATOR, self.ratings_columns(text, ML1M_SEPARATOR))

    def read_users(self, path: Path) -> pl.DataFrame:
        text = load_text(path, self.display(path), encoding=LATIN1)
        frame = split_columns(text, [USER_ID, "gender", "age", "occupation", "zip"], ML1M_SEPARATOR)
        check_unique(frame, USER_ID, text)
        return frame

    def read_movies(self, path: Path) -> pl.DataFrame:
        text = load_text(path, self.display(path), encoding=LATIN1)
        frame = split_columns(text, [ITEM_ID, "title", "genres"], ML1M_SEPARATOR)
        check_unique(frame, ITEM_ID, text)
        return frame.select(ITEM_ID, "genres", year_from(frame["title"], YEAR_IN_TITLE))


# ---------------------------------------------------------------------------------------------------
# ml-latest(-small)


LATEST_HEADER = {USER_ID: "userId", ITEM_ID: "movieId", RATING: "rating", TIMESTAMP: "timestamp"}
"""The header name of each column of ml-latest's ``ratings.csv``."""


class MovieLensLatestOptions(MovieLensOptions):
    """ml-latest CSV paths (default: the shared ``movielens-latest-small``); there is no user table."""

    ratings: str = "movielens-latest-small/ratings.csv.gz"
    movies: str | None = "movielens-latest-small/movies.csv.gz"
    user_fields: list[UserField] = Field(default_factory=list)

    @field_validator("user_fields")
    @classmethod
    def _no_user_table(cls, fields: list[UserField]) -> list[UserField]:
        if fields:
            raise ValueError("ml-latest has no user table; leave 'user_fields' empty")
        return fields


@READERS.register("movielens_latest")
class MovieLensLatestReader(MovieLensReader):
    """ml-latest: ``ratings.csv`` (``userId,movieId,rating,timestamp``) and ``movies.csv`` (quoted titles)."""

    Options = MovieLensLatestOptions
    options: MovieLensLatestOptions

    def read_ratings(self, path: Path) -> pl.DataFrame:
        text = load_text(path, self.display(path))
        columns = self.ratings_columns(text, ",")  # the header has as many columns as the lines
        text = expect_header(text, [LATEST_HEADER[name] for name in columns], ",")
        return self.ratings_frame(text, ",", columns)

    def read_movies(self, path: Path) -> pl.DataFrame:
        header = ["movieId", "title", "genres"]
        text = expect_header(load_text(path, self.display(path)), header, ",")
        frame = split_columns(text, [ITEM_ID, "title", "genres"], ",", quote_char='"')
        reject_repeated_header(frame, text, header)
        check_unique(frame, ITEM_ID, text)
        genres = pl.col("genres")
        return frame.select(
            ITEM_ID,
            pl.when(genres != NO_GENRES).then(genres).alias("genres"),
            year_from(frame["title"].str.strip_chars(), YEAR_IN_TITLE),
        )
