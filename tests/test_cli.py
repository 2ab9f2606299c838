"""The command line: what each command prints and how it fails."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from embdim.cli import app
from embdim.registry import MODELS, READERS, SEARCHERS


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
