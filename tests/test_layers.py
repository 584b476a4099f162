"""The import layers of design.md §1, enforced by reading every module's imports with `ast`.

A module may import modules of its own or an earlier layer, never a later one; modules must not
import each other in a cycle; and every `lipstep.*` import sits at module top, so a module's
dependencies can be read off its first lines (imports under `if TYPE_CHECKING:` are ignored; the
modules of `LAZY_OK` may import inside functions, for start-up time). `check_layers` does the work;
the last test shows on a fake package that it reports each kind of violation.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Earlier layers may be imported by later ones, never the reverse. The key is a module's first
# name under the package ("" is the package `__init__` itself).
LAYERS = [
    ("base", ["", "errors", "config", "fsutil", "fit", "checks", "netdir"]),
    ("data", ["data"]),
    ("codecs/audio", ["codecs", "audio"]),
    ("nets", ["nets"]),
    ("diffusion", ["diffusion"]),
    ("samplers", ["samplers"]),
    ("modeldir", ["modeldir"]),
    ("distill", ["distill"]),
    ("train", ["train"]),
    ("runtime", ["runtime"]),
    ("pipeline", ["pipeline", "hybrid"]),
    ("eval/demo", ["eval", "demo"]),
    ("entry points", ["cli", "server", "__main__"]),
]

# Modules that may import lipstep modules inside functions, and why (keep this short).
LAZY_OK = {
    "lipstep.cli": "each command imports the library it drives when it runs, so `lipstep --help` "
                   "answers without loading torch (about 8 s of CPU for all of them)",
}


def _module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file for every module of `package` under `root`."""
    names = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module):
    """Yield (node, enclosing function/class name or None), skipping `if TYPE_CHECKING:` bodies."""

    def walk(node, scope):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:
                    yield from walk_one(sub, scope)
                continue
            yield from walk_one(child, scope)

    def walk_one(node, scope):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, scope
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            scope = scope or getattr(node, "name", "<lambda>")
        yield from walk(node, scope)

    yield from walk(tree, None)


def _targets(node, module: str, is_package: bool, known: set[str], package: str) -> list[str]:
    """The `package` modules an import statement refers to (most specific known module)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            stem = ".".join(base + ([node.module] if node.module else []))
        else:
            stem = node.module or ""
        names = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in known else stem for alias in node.names]
    out = []
    for name in names:
        if name != package and not name.startswith(package + "."):
            continue
        while name not in known and "." in name:  # `import pkg.mod.Class`-like: nearest module
            name = name.rsplit(".", 1)[0]
        if name not in out:
            out.append(name)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, plus self-imports (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(comp) > 1 or v in graph.get(v, ()):
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def check_layers(root: Path, package: str, layers=LAYERS, lazy_ok=LAZY_OK) -> list[str]:
    """Every layer violation of `package` (a folder under `root`), one readable line each: upward
    imports, import cycles, unknown layers, and `package` imports inside functions or classes
    (except in the modules of `lazy_ok`)."""
    layer_of = {key: (i, name) for i, (name, keys) in enumerate(layers) for key in keys}
    modules = _module_names(root, package)
    known = set(modules)

    def layer(mod):
        key = mod.split(".")[1] if "." in mod else ""
        return layer_of.get(key)

    problems, graph = [], {m: set() for m in modules}
    for mod, path in modules.items():
        if layer(mod) is None:
            problems.append(f"{mod}: unknown layer (add it to LAYERS in tests/test_layers.py)")
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, scope in _imports(tree):
            for target in _targets(node, mod, path.name == "__init__.py", known, package):
                graph[mod].add(target)
                if scope is not None and mod not in lazy_ok:
                    problems.append(f"{mod} -> {target} (import inside {scope}, line {node.lineno})")
                a, b = layer(mod), layer(target)
                if a is not None and b is not None and b[0] > a[0]:
                    problems.append(f"{mod} -> {target} (layer {a[0]} {a[1]} -> layer {b[0]} {b[1]})")
    for comp in _cycles(graph):
        inner = sorted(f"{a} -> {b}" for a in comp for b in graph[a] if b in comp)
        problems.append(f"import cycle among {', '.join(comp)}: {'; '.join(inner)}")
    return sorted(set(problems), key=problems.index)


def test_lipstep_layers():
    problems = check_layers(SRC, "lipstep")
    if problems:
        pytest.fail(f"{len(problems)} layer violation(s) (design.md §1; order in tests/test_layers.py):\n"
                    + "\n".join(problems), pytrace=False)


def test_checker_reports_upward_cycle_and_function_imports(tmp_path):
    pkg = tmp_path / "fake"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "low.py").write_text("from fake.train import high\n")  # upward
    (pkg / "data" / "a.py").write_text("from . import b\n")  # a <-> b cycle, same layer
    (pkg / "data" / "b.py").write_text("from fake.data.a import thing\n")
    (pkg / "train.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from fake import cli\n"  # ignored
        "def f():\n    import fake.data.low\n"  # function-level
    )
    (pkg / "cli.py").write_text("import fake.train\ndef run():\n    from fake.data import b\n")  # lazy: allowed
    (pkg / "orphan.py").write_text("")
    layers = [("base", [""]), ("data", ["data"]), ("train", ["train"]), ("cli", ["cli"])]

    problems = check_layers(tmp_path, "fake", layers, lazy_ok={"fake.cli": "start-up time"})

    assert problems == [
        "fake.data.low -> fake.train (layer 1 data -> layer 2 train)",
        "fake.orphan: unknown layer (add it to LAYERS in tests/test_layers.py)",
        "fake.train -> fake.data.low (import inside f, line 5)",
        "import cycle among fake.data.a, fake.data.b: fake.data.a -> fake.data.b; fake.data.b -> fake.data.a",
        "import cycle among fake.data.low, fake.train: fake.data.low -> fake.train; fake.train -> fake.data.low",
    ]
