"""The package's layers only point down, and there is no import circle anywhere in it.

Read from the code itself: an AST walk over every module of `rapidun_dist` (function-level imports included,
since an import inside a function is still a dependency; it only fails later). Also: every reference to a design
section in the code names a section that exists in docs/DESIGN.md.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Bottom to top. A module may import modules of its own layer or of a lower one; never of a higher one.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),
    ("config",),
    ("run",),
    ("distributed", "kernels"),
    ("data", "models"),
    ("training",),
    ("influence",),
    ("weights",),
    ("find_poison", "unlearn", "evaluation", "attribution"),
    ("stages",),
    ("pipeline", "launcher", "validate"),
    ("cli",),  # the command lines: `rapidun` and `python -m rapidun_dist.cli.experiments`
)
ORCHESTRATION = ("stages", "pipeline", "launcher", "cli")


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for path in (root / "rapidun_dist").rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in its body), for the package under `root`."""
    modules = _modules(root)
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]
            for t in targets:
                if t.split(".")[0] != "rapidun_dist":
                    continue
                resolved = _resolve(t, modules)
                if resolved and resolved != mod:
                    graph[mod].add(resolved)
        graph.setdefault(mod, set())
    return graph


def layer_of(mod: str) -> int | None:
    parts = mod.split(".")
    if len(parts) == 1:
        return None  # the package's own __init__
    for i, names in enumerate(LAYERS):
        if parts[1] in names:
            return i
    return -1


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in import_graph() if layer_of(m) == -1)
    assert not unplaced, f"modules outside every layer (add their folder to LAYERS): {unplaced}"


def test_no_import_circle_anywhere_in_the_package():
    assert cycles(import_graph()) == []


def test_imports_only_point_down():
    upward = [
        f"{m} ({LAYERS[layer_of(m)][0]}) -> {t} ({LAYERS[layer_of(t)][0]})"
        for m, targets in import_graph().items()
        for t in sorted(targets)
        if layer_of(m) is not None and layer_of(t) is not None and layer_of(t) > layer_of(m)
    ]
    assert upward == []


def test_no_library_module_imports_the_orchestration():
    is_orch = lambda m: m.split(".")[1] in ORCHESTRATION if "." in m else True  # noqa: E731
    bad = [f"{m} -> {t}" for m, ts in import_graph().items() if not is_orch(m) for t in ts if is_orch(t)]
    assert bad == []


def test_the_checks_catch_a_circle_and_an_upward_import():
    graph = {
        "rapidun_dist.core.a": {"rapidun_dist.stages.b"},
        "rapidun_dist.stages.b": {"rapidun_dist.core.a"},
    }
    assert cycles(graph) == [["rapidun_dist.core.a", "rapidun_dist.stages.b"]]
    assert layer_of("rapidun_dist.stages.b") > layer_of("rapidun_dist.core.a")
    assert layer_of("rapidun_dist.nowhere.c") == -1


@pytest.mark.parametrize(
    "text", ["from rapidun_dist.stages import fingerprint\n", "import rapidun_dist.cli\n"]
)
def test_function_level_imports_count(tmp_path, text):
    pkg = tmp_path / "rapidun_dist"
    (pkg / "core").mkdir(parents=True)
    (pkg / "stages").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "stages" / "__init__.py").write_text("def fingerprint():\n    pass\n")
    (pkg / "core" / "x.py").write_text("def f():\n    " + text.replace("\n", "\n    "))
    assert import_graph(tmp_path)["rapidun_dist.core.x"] & {"rapidun_dist.stages", "rapidun_dist.cli"}


def test_design_references_resolve_to_docs_design():
    design = (ROOT / "docs" / "DESIGN.md").read_text()
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", design, flags=re.M)}
    refs = []
    for folder in ("rapidun_dist", "launch", "benchmarks", "kernels", "configs", "slurm", "tests"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in (".py", ".yaml", ".sh", ".md") or not path.is_file():
                continue
            text = path.read_text(errors="replace")
            bare = re.search(r"(?<![\w/.])DESIGN" + r" section", text)  # split: this file names the pattern
            assert not bare, f"{path}: say docs/DESIGN.md section N"
            for m in re.finditer(r"docs/DESIGN\.md\s+sections?\s+(\d+)(?:\s*-\s*(\d+))?", text):
                refs.append((path.relative_to(ROOT), int(m.group(1))))
                if m.group(2):
                    refs.append((path.relative_to(ROOT), int(m.group(2))))
    assert len(refs) >= 30  # the code does point into the design
    missing = [f"{p}: section {n}" for p, n in refs if n not in sections]
    assert missing == []


def test_every_file_docs_design_names_exists():
    """A path in backquotes in docs/DESIGN.md (`influence/gram/blocks.py`, `rapidun_dist/run/layout.py: fn`) names
    a file of the repository: the design moves with the code."""
    design = (ROOT / "docs" / "DESIGN.md").read_text()
    folders = ("rapidun_dist", "launch", "benchmarks", "kernels", "tests", "scripts")
    files = [str(p.relative_to(ROOT)) for d in folders for p in (ROOT / d).rglob("*.py")]
    named = set(re.findall(r"`([\w/]+\.py)", design))
    assert len(named) > 20
    missing = sorted(n for n in named if not any(f == n or f.endswith("/" + n) for f in files))
    assert missing == []
