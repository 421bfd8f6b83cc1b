"""The shape of the package, checked: layers, no cycles, lazy imports with reasons, short functions,
no private names across packages, no comments that point outside the repository.

The layer contract itself lives in `pyproject.toml` (`[tool.importlinter]`) and is run here, so
the README's test command (and CI) enforces it.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "updp"
# Modules that keep `import updp` and the CLI's start cheap by importing the workflows on first use.
LAZY_FACADES = {"updp", "updp.api", "updp.cli"}
MAX_FUNCTION_LINES = 80
LAZY_REASON = re.compile(r"#\s*(lazy|optional):\s*\S")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path):
    """(node, imported updp module names, inside a function) for every import statement."""
    tree = ast.parse(path.read_text())
    in_function: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from updp.x import y` imports updp.x, and updp.x.y when y is a module
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names
                                     if f"{node.module}.{a.name}" in MODULES]
        else:
            continue
        yield node, [n for n in names if n == "updp" or n.startswith("updp.")], id(node) in in_function


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in MODULES.items():
        for _, targets, _ in _imports(path):
            edges[name].update(t for t in targets if t in MODULES and t != name)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), over every node of `edges`."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return out


def _package_of(module: str) -> str:
    """The top-level package (or module) of updp a module belongs to: updp.training, updp.cli, ..."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def test_the_layer_contract_holds():
    exe = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


def test_no_import_cycles_between_modules_or_packages_counting_imports_in_functions():
    edges = _graph()
    assert _cycles(edges) == []
    packages: dict[str, set[str]] = defaultdict(set)
    for a, targets in edges.items():
        packages[_package_of(a)].update(_package_of(t) for t in targets if _package_of(t) != _package_of(a))
    assert _cycles(packages) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}}) == []


def test_nothing_below_the_facades_imports_them():
    facades = {"updp.api", "updp.cli", "updp"}
    for name, path in MODULES.items():
        if name in facades or name == "updp.__main__":
            continue
        for node, targets, _ in _imports(path):
            assert not set(targets) & facades, f"{path.relative_to(ROOT)}:{node.lineno} imports {targets}"


def test_imports_inside_functions_keep_start_up_cheap_and_say_why():
    """Lazy imports of updp modules only in the facades and the workflows (a workflow reaches its torch
    side only on the path that needs it, so `updp bench file.onnx` starts without torch); every lazy
    import carries its reason."""
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        for node, targets, in_function in _imports(path):
            if not in_function:
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            assert LAZY_REASON.search(lines[node.lineno - 1]), f"{where}: a lazy import needs '# lazy: why'"
            if targets:
                assert name in LAZY_FACADES or name.startswith("updp.workflows."), \
                    f"{where}: imports {targets} inside a function"


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []


def test_private_names_are_not_imported_across_packages():
    bad = []
    for name, path in MODULES.items():
        for node, _, _ in _imports(path):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("updp"):
                for alias in node.names:
                    private = alias.name.startswith("_") and not alias.name.endswith("__")
                    if private and _package_of(node.module) != _package_of(name):
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}")
    assert bad == []


@pytest.mark.parametrize("folder", ["updp", "tests", "benchmarks", "scripts"])
def test_comments_do_not_point_outside_the_repository(folder):
    pattern = re.compile(r"issue\s*#\s*\d|\bissue \d+\b|STYLE\.md|\.\./shared|UPDP\.md", re.I)
    hits = []
    for path in sorted((ROOT / folder).rglob("*")):
        if path.suffix not in (".py", ".sh") or path.name == "test_architecture.py":
            continue
        for k, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{k}: {line.strip()}")
    assert hits == []


TORCH_LOADERS = ("torch", "timm", "torchvision", "updp")


def _first_top_level_import(tree: ast.Module, names: tuple[str, ...]) -> int | None:
    """Line of the first module-level import of one of `names` (or a submodule), None when absent."""
    for node in tree.body:
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules = [node.module or ""]
        else:
            continue
        if any(m.split(".")[0] in names for m in modules):
            return node.lineno
    return None


def test_benchmarks_choose_openmp_waiting_before_torch_loads():
    """libgomp reads its waiting policy once, when torch loads it; `_common` picks the policy on
    import, so it has to be imported before anything that may load torch."""
    late = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        tree = ast.parse(path.read_text())
        common, torch_line = _first_top_level_import(tree, ("_common",)), _first_top_level_import(tree, TORCH_LOADERS)
        if common is not None and torch_line is not None and torch_line < common:
            late.append(f"{path.name}: line {torch_line} loads torch before _common (line {common})")
    assert late == []


def test_tests_mirror_the_package_tree():
    """Every test folder is a package of updp (onnx_passes, training, ...), so a module's tests are
    where its code is."""
    folders = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= packages, folders - packages


def test_only_the_shells_print():
    """Library layers report through return values, callbacks (`echo`) and `logging`."""
    printing = []
    for name, path in MODULES.items():
        if name in ("updp.cli", "updp.api"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                printing.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert printing == []


def test_the_onnx_file_commands_start_without_torch():
    """`updp bench` and `updp optimize` on a file someone brings import neither torch nor the model zoo
    until they need them (torch, torchvision and timm take about 7 s to import on 2 cores)."""
    probe = ("import sys, updp.cli, updp.workflows.bench, updp.workflows.optimize; "
             "print(sorted(m for m in ('torch', 'torchvision', 'timm', 'onnxsim') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
