"""Dependencies run one way: no module imports one of a higher layer (module-level or inside a function)."""

from __future__ import annotations

import ast

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "embdim"

#: From the ground up. A module may import its own layer and those below, never one above.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "options", "measures", "ahead", "tensorfile", "registry"),
    ("data", "storage", "plan", "budget", "lookup", "rowwise", "slim", "distributed"),
    ("backends", "searchers", "models"),
    ("plugins", "embedding", "recommender", "config", "torchrec_export"),
    ("train",),
    ("bench", "serve"),
    ("report",),
    ("cli", "__main__", "__init__"),
]


def _layer(module: str) -> int:
    head = module.split(".")[0]
    for level, names in enumerate(LAYERS):
        if head in names:
            return level
    raise AssertionError(f"embdim.{module} is in no layer of tests/test_architecture.py: place it")


MODULES = {".".join(p.relative_to(PACKAGE).with_suffix("").parts) for p in PACKAGE.rglob("*.py")}


def _imports() -> list[tuple[str, str, int]]:
    """(importing module, imported module, line) for every ``embdim.*`` import in the package
    (``from embdim.x import y`` names ``x.y`` when ``y`` is a module; ``from embdim import x`` names ``x``)."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "embdim":
                targets = [f"embdim.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("embdim."):
                base = node.module.removeprefix("embdim.")
                names = [f"{base}.{a.name}" for a in node.names]
                subs = [n for n in names if n in MODULES or f"{n}.__init__" in MODULES]  # a module or a package
                targets = [f"embdim.{t}" for t in subs] or [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("embdim.")]
            else:
                continue
            out += [(module, t.removeprefix("embdim."), node.lineno) for t in targets]
    return out


def test_every_module_is_placed_in_a_layer():
    for path in PACKAGE.rglob("*.py"):
        _layer(".".join(path.relative_to(PACKAGE).with_suffix("").parts))


def test_no_module_imports_one_of_a_higher_layer():
    upward = [
        f"embdim.{src} (layer {_layer(src)}) imports embdim.{dst} (layer {_layer(dst)}) at line {line}"
        for src, dst, line in _imports()
        if _layer(dst) > _layer(src)
    ]
    assert not upward, "\n".join(upward)


def test_the_ground_floor_imports_nothing_above_itself():
    assert not [(s, d) for s, d, _ in _imports() if s in LAYERS[0] and _layer(d) > 0]


def test_there_is_no_import_cycle():
    graph: dict[str, set[str]] = {}

    def resolve(target: str) -> str:  # "data.readers" names data/readers/__init__.py
        return target if target in MODULES else f"{target}.__init__"

    for src, dst, _ in _imports():
        graph.setdefault(src, set()).add(resolve(dst))
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)
