"""The command line: what each command prints and how it fails."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from embdim.cli import app
from embdim.plugins import MODELS, READERS, SEARCHERS


@pytest.mark.parametrize(
    ("name", "config"), [("pep", SEARCHERS.get("pep").Config), ("deepfm", MODELS.get("deepfm").Config)]
)
def test_options_lists_every_key_of_a_plugin_with_its_default(name, config):
    result = CliRunner().invoke(app, ["options", name], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for key, field in config.model_fields.items():
        assert key in result.output
        if isinstance(field.default, float):
            assert repr(field.default) in result.output


def test_options_of_a_reader_and_of_an_unknown_name():
    runner = CliRunner()
    assert "path" in runner.invoke(app, ["options", "criteo"], env={"COLUMNS": "200"}).output
    assert "criteo" in READERS
    result = runner.invoke(app, ["options", "nope"])
    assert result.exit_code == 2 and "no method, model or reader named 'nope'" in result.output


def test_warnings_go_to_the_stderr_of_each_command_run_in_one_process(monkeypatch):
    """A test runner or notebook swaps sys.stderr for each command and closes it after: a warning of a later
    command must reach that command's stream, not the closed one of the first."""
    import io
    import logging

    from embdim.cli import _log_warnings_to_stderr

    logger = logging.getLogger("embdim")
    for name, value in (("handlers", []), ("propagate", logger.propagate), ("level", logger.level)):
        monkeypatch.setattr(logger, name, value)  # restored after: other tests see the logger as it was
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    _log_warnings_to_stderr()
    first.close()
    monkeypatch.setattr("sys.stderr", second)
    logger.warning("drift starts late")
    assert second.getvalue() == "warning: drift starts late\n"


def test_list_names_every_built_in_plugin_in_a_fresh_process() -> None:
    # A fresh interpreter: nothing imported the plug-in packages before the command looked them up.
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "embdim", "list"], capture_output=True, text=True, check=True).stdout
    listed = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert set(listed["methods"].split(", ")) >= {"full", "mde", "pep", "dml", "amtl", "mlet", "hash", "qr"}
    assert set(listed["models"].split(", ")) >= {"fm", "deepfm", "dlrm", "autoint"}
    readers = {"criteo", "avazu", "movielens_100k", "movielens_1m", "movielens_latest", "frappe", "frappe_libfm"}
    assert set(listed["readers"].split(", ")) >= readers | {"ipinyou", "libfm", "table", "synthetic"}
