"""The errors a user can act on. Each message says what is wrong and where: the file and line for
data, the dotted key (and the YAML file) for configs, the file and field for model folders.

The command line prints them as one ``error:`` line each, never a traceback (``EMBDIM_DEBUG=1``
shows the traceback of anything else). This module imports nothing of embdim: every layer may
raise these.
"""

from __future__ import annotations

MAX_SHOWN_CHARS = 200
"""Values echoed into a message are cut to this many characters."""


class EmbdimError(Exception):
    """A failure caused by the input, the config or the environment, not by a bug."""


class ConfigError(EmbdimError, ValueError):
    """A configuration problem; the message names the file and the key."""


class DataError(EmbdimError, ValueError):
    """Bad input data; the message names the file and line (or the config key)."""


class DivergedError(EmbdimError):
    """Training produced a non-finite loss, gradient or weight: there is no result to report."""


class UnreadableFile(EmbdimError):
    """A run-state file (checkpoint, weights) that exists but cannot be read back."""


class ModelFileError(EmbdimError, ValueError):
    """A model folder that is damaged, tampered with or of an unknown format; names the file and field."""


def shorten(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """``text`` cut to about ``limit`` characters, saying how long it was (for values echoed in messages)."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 30]}... ({len(text):,} characters in all)"
