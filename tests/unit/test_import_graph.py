"""The import graph of ``fairdiff``, read statically: no import cycle, no upward import between layers.

The graph's nodes are the modules of ``src/fairdiff`` (a package's ``__init__.py`` is a module of its own). Its
edges are every import of a ``fairdiff`` module written in a module: ``import fairdiff.x``, ``from fairdiff.x
import y`` (to ``fairdiff.x.y`` when that is a module, else to ``fairdiff.x``), relative imports, imports inside
functions and under ``if TYPE_CHECKING``, and a string constant that is exactly a module's dotted name (the CLI's
``import_module`` lists). The implicit import of a parent package that Python runs first is not an edge: every
module would otherwise depend on ``fairdiff/__init__.py``, the public facade that sits on top.

Layers, from the bottom (a module may import its own layer and the layers below it, never one above)::

    0    fairdiff.errors, fairdiff.utils, fairdiff.metrics   pure helpers
    0.5  fairdiff.config     imports only errors and utils.io; every layer from data up reads a RunConfig
    1    fairdiff.data
    2    fairdiff.models
    2.5  fairdiff.runs       run folders: loads models (a latent model's VAE) and reads configs; below methods,
                             so that methods, training, sampling, evaluation, bench and the CLI can all use it
    3    fairdiff.methods
    4    fairdiff.training, fairdiff.sampling
    5    fairdiff.evaluation, fairdiff.bench, fairdiff.debias
    6    fairdiff.cli, fairdiff.__main__, fairdiff (the package facade: ``fairdiff.train`` etc.)

Within a layer, some directions are forbidden too (``SIBLING_RULES``): sampling never imports training (training
may import sampling, to draw its preview grids); evaluation never imports bench or debias (they run evaluations),
debias never imports bench (the demo and bench use debias); utils
never imports metrics, and errors imports nothing of fairdiff.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "fairdiff"

RANKS: dict[str, float] = {
    "fairdiff.errors": 0,
    "fairdiff.utils": 0,
    "fairdiff.metrics": 0,
    "fairdiff.method_options": 0.4,  # each method's typed options (pure; the config is built from them)
    "fairdiff.config": 0.5,
    "fairdiff.data": 1,
    "fairdiff.models": 2,
    "fairdiff.runs": 2.5,
    "fairdiff.methods": 3,
    "fairdiff.training": 4,
    "fairdiff.sampling": 4,
    "fairdiff.evaluation": 5,
    "fairdiff.bench": 5,
    "fairdiff.debias": 5,
    "fairdiff.cli": 6,
    "fairdiff.__main__": 6,
    "fairdiff": 6,
}

# (importer layer, imported layer): forbidden although the ranks are equal
SIBLING_RULES: list[tuple[str, str]] = [
    ("fairdiff.sampling", "fairdiff.training"),
    ("fairdiff.evaluation", "fairdiff.bench"),
    ("fairdiff.evaluation", "fairdiff.debias"),
    ("fairdiff.debias", "fairdiff.bench"),
    ("fairdiff.utils", "fairdiff.metrics"),
    ("fairdiff.errors", "fairdiff.utils"),
    ("fairdiff.errors", "fairdiff.metrics"),
    ("fairdiff.errors", "fairdiff.config"),
]

# Known violations that are kept on purpose, each with its reason: (importer module, imported module) -> why.
# Empty: every violation found when this test was written was fixed in the code.
ALLOWED: dict[tuple[str, str], str] = {}


def _modules(src: Path = SRC) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``) for every module of the package."""
    out = {}
    for p in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(p.relative_to(src).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


def _target(name: str, modules: dict) -> str | None:
    """The module an import of ``name`` loads: ``name`` itself, or its nearest enclosing package or module."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_edges(src: Path = SRC) -> dict[tuple[str, str], list[str]]:
    """``(importer, imported) -> ["path:line", ...]`` for every fairdiff-internal import."""
    modules = _modules(src)
    edges: dict[tuple[str, str], list[str]] = {}

    def add(importer: str, name: str, where: str) -> None:
        t = _target(name, modules)
        if t is not None and t != importer:
            places = edges.setdefault((importer, t), [])
            if where not in places:
                places.append(where)

    for mod, (path, is_pkg) in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        package = mod if is_pkg else mod.rpartition(".")[0]
        rel = path.relative_to(src.parent).as_posix()
        for node in ast.walk(tree):
            where = f"{rel}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                        add(mod, alias.name, where)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    if node.level - 1 > len(base) - 1:
                        raise AssertionError(f"{where}: relative import beyond the package")
                    base = base[: len(base) - (node.level - 1)]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                if not (name == PACKAGE or name.startswith(PACKAGE + ".")):
                    continue
                for alias in node.names:
                    sub = f"{name}.{alias.name}"
                    add(mod, sub if sub in modules else name, where)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules \
                    and "." in node.value:
                add(mod, node.value, where)
    return edges


def layer_of(module: str) -> str:
    """The layer a module belongs to: the longest key of RANKS that is the module or one of its packages."""
    best = None
    for layer in RANKS:
        if (module == layer or module.startswith(layer + ".")) and (best is None or len(layer) > len(best)):
            best = layer
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add its package to RANKS in {Path(__file__).name}")
    return best


def cycles(edges) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # iterative enough for a graph of ~100 modules
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def layer_violations(edges) -> list[str]:
    """One line per import that goes up a layer or breaks a sibling rule (and is not in ALLOWED)."""
    out = []
    for (a, b), where in sorted(edges.items()):
        if (a, b) in ALLOWED:
            continue
        la, lb = layer_of(a), layer_of(b)
        if RANKS[lb] > RANKS[la]:
            out.append(f"{a} -> {b}: up from {la} ({RANKS[la]}) to {lb} ({RANKS[lb]}) at {', '.join(where)}")
        elif (la, lb) in SIBLING_RULES:
            out.append(f"{a} -> {b}: {la} may not import {lb} at {', '.join(where)}")
    return out


def _cycle_report(comps, edges) -> list[str]:
    lines = []
    for comp in comps:
        members = set(comp)
        inner = [f"  {a} -> {b} at {', '.join(w)}" for (a, b), w in sorted(edges.items())
                 if a in members and b in members]
        lines.append(f"cycle among {', '.join(comp)}:")
        lines.extend(inner)
    return lines


def test_no_import_cycles():
    edges = {k: v for k, v in import_edges().items() if k not in ALLOWED}
    comps = cycles(edges)
    report = _cycle_report(comps, edges)
    print("\n".join(report))
    assert not comps, "import cycles in fairdiff:\n" + "\n".join(report)


def test_no_upward_imports():
    bad = layer_violations(import_edges())
    print("\n".join(bad))
    assert not bad, "imports against the layers of fairdiff:\n" + "\n".join(bad)


def test_run_folder_api_is_not_imported_from_training():
    """Run folders are read and written through fairdiff.runs; training keeps only the checkpoint logic."""
    from fairdiff import runs

    moved = set(runs.__all__)
    bad = []
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fairdiff.training"):
                names = sorted(a.name for a in node.names if a.name in moved)
                if names:
                    bad.append(f"{path.relative_to(SRC).as_posix()}:{node.lineno} imports {', '.join(names)} "
                               f"from {node.module}; import it from fairdiff.runs")
    print("\n".join(bad))
    assert not bad, "\n".join(bad)


def test_every_module_has_a_layer():
    unplaced = []
    for mod in _modules():
        try:
            layer_of(mod)
        except AssertionError as e:
            unplaced.append(str(e))
    assert not unplaced, "\n".join(unplaced)


# --- the checker itself, on small packages written here: it must find what it is meant to find ---------------


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / PACKAGE / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return root


def test_checker_finds_cycles_upward_and_sibling_imports(tmp_path):
    src = _write_package(tmp_path, {
        "__init__.py": "",
        "utils/__init__.py": "",
        "utils/io.py": "def f():\n    from fairdiff.models import net  # upward, inside a function\n",
        "models/__init__.py": "",
        "models/net.py": "from ..utils import io\n",  # relative, closes a cycle with utils/io.py
        "sampling/__init__.py": "",
        "sampling/files.py": "import fairdiff.training.trainer\n",
        "training/__init__.py": "",
        "training/trainer.py": "from fairdiff.sampling import files\nfrom fairdiff.errors import E\n",
        "errors.py": "class E(Exception):\n    pass\n",
        "cli/__init__.py": "",
        "cli/main.py": "NAMES = ['fairdiff.training.trainer']\n",
    })
    edges = import_edges(src)
    assert ("fairdiff.utils.io", "fairdiff.models.net") in edges
    assert ("fairdiff.models.net", "fairdiff.utils.io") in edges
    assert ("fairdiff.training.trainer", "fairdiff.sampling.files") in edges
    assert ("fairdiff.training.trainer", "fairdiff.errors") in edges
    assert ("fairdiff.cli.main", "fairdiff.training.trainer") in edges
    assert cycles(edges) == [["fairdiff.models.net", "fairdiff.utils.io"],
                             ["fairdiff.sampling.files", "fairdiff.training.trainer"]]
    bad = layer_violations(edges)
    assert any(line.startswith("fairdiff.utils.io -> fairdiff.models.net: up") and "utils/io.py:2" in line
               for line in bad), bad
    assert any(line.startswith("fairdiff.sampling.files -> fairdiff.training.trainer: fairdiff.sampling may not")
               for line in bad), bad
    assert len(bad) == 2, bad  # models -> utils, training -> sampling, cli -> training and -> errors are fine
