"""The README's example of embdim's layer inside a user's own module runs and says what it claims."""

from __future__ import annotations

import re

from conftest import REPO_ROOT


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_embedding_example_runs(capsys):
    blocks = _python_blocks((REPO_ROOT / "README.md").read_text())
    example = next(b for b in blocks if "EmbeddingLayer" in b)
    assert len(example.strip().splitlines()) <= 30
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)
    model, plan, slim = scope["model"], scope["plan"], scope["slim"]
    ids = __import__("torch").tensor([[1, 42, 7], [999, 4999, 0]])
    assert scope["logits"].shape == (2,)
    assert plan.num_bytes < plan.full_bytes
    assert (slim(ids) - model.embedding(ids)).abs().max() < 1e-6
    assert "bytes" in capsys.readouterr().out


def test_readme_names_both_commands():
    text = (REPO_ROOT / "README.md").read_text()
    assert "bash scripts/setup.sh && .venv/bin/embdim bench configs/bench/quickstart.yaml --jobs 2" in text
    assert ".venv/bin/python -m pytest -q" in text
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "scripts/setup.sh" in ci and ".venv/bin/python -m pytest -q" in ci
