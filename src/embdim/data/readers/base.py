"""Reader interface: a registered class that turns source files into :class:`RawData`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from embdim.data.raw import RawData


class ReaderOptions(BaseModel):
    """Base of every reader's options; unknown keys are an error that names the key."""

    model_config = ConfigDict(extra="forbid")


class Reader(ABC):
    """Reads one dataset format.

    Subclasses set ``Options`` (a :class:`ReaderOptions` subclass) and implement :meth:`read`.
    Relative paths in the options are resolved against ``root`` (the data root, by default
    ``../shared/datasets``).
    """

    Options: ClassVar[type[ReaderOptions]] = ReaderOptions

    def __init__(self, options: ReaderOptions, root: Path) -> None:
        self.options = options
        self.root = Path(root)

    def path(self, name: str | Path) -> Path:
        p = Path(name).expanduser()
        return p if p.is_absolute() else self.root / p

    @abstractmethod
    def sources(self) -> list[Path]:
        """The files :meth:`read` will read, resolved (they key the cache; no reading here)."""

    @abstractmethod
    def read(self) -> RawData:
        """Read the files; raise :class:`~embdim.data.raw.DataError` naming file and line on bad input."""
