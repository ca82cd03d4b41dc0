"""docs/ARCHITECTURE.md holds the code to account: its tables are read here and compared with the
modules as they are (imports read with `ast`, function-level imports included)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
PACKAGES = ("mnist_train", "analysis")
MAX_FUNCTION_LINES = 100  # non-blank lines


def table(heading: str) -> list[list[str]]:
    """The rows (cells, stripped) of the first markdown table under `## heading`."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def code_names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def modules() -> dict[str, Path]:
    """`mnist_train/runner.py` -> its path, for every module of both packages."""
    return {
        path.relative_to(ROOT).as_posix(): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def dotted(module: str) -> str:
    return module.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def imports(path: Path) -> set[str]:
    """Absolute dotted names of everything `path` imports, at any depth of the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = dotted(path.relative_to(ROOT).as_posix())
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return found


def project_imports(path: Path, known: dict[str, str]) -> set[str]:
    """The project modules (values of `known`, dotted -> path) that `path` imports; a package's
    `__init__.py` is left out (`from mnist_train import contract` names the package too)."""
    found = {known[name] for name in imports(path) if name in known}
    return {m for m in found if not m.endswith("__init__.py")} - {path.relative_to(ROOT).as_posix()}


def layers() -> dict[str, int]:
    return {code_names(row[0])[0]: int(row[1].split()[0]) for row in table("Modules")}


def test_every_module_is_named_once():
    named = [code_names(row[0])[0] for row in table("Modules")]
    assert len(named) == len(set(named)), "a module is listed twice"
    assert set(named) == set(modules()), (
        f"missing from the doc: {sorted(set(modules()) - set(named))}; "
        f"listed but gone: {sorted(set(named) - set(modules()))}"
    )


def test_imports_go_down_the_layers():
    layer = layers()
    known = {dotted(m): m for m in modules()}
    upward = []
    for module, path in modules().items():
        for target in project_imports(path, known):
            same_package = target.split("/")[0] == module.split("/")[0]
            if same_package and layer[target] > layer[module]:
                upward.append(f"{module} (layer {layer[module]}) -> {target} ({layer[target]})")
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_the_analysis_imports_only_the_training_modules_the_doc_allows():
    allowed = {}
    for row in table("Across the packages"):
        who = "any" if row[0] == "any" else code_names(row[0])[0]
        allowed[who] = {f"mnist_train/{name}.py" for name in code_names(row[1])}
    known = {dotted(m): m for m in modules()}
    crossing = []
    for module, path in modules().items():
        targets = {
            t for t in project_imports(path, known) if t.split("/")[0] != module.split("/")[0]
        }
        if module.startswith("mnist_train/") and targets:
            crossing.append(f"{module} -> {sorted(targets)} (training never imports analysis)")
        elif module.startswith("analysis/"):
            extra = targets - allowed["any"] - allowed.get(module, set())
            if extra:
                crossing.append(f"{module} -> {sorted(extra)}")
    assert not crossing, "\n".join(crossing)


@pytest.mark.parametrize(
    ("heading", "library"),
    [("Which modules talk to MLflow, and why", "mlflow"), ("Which modules use Optuna", "optuna")],
)
def test_exactly_the_listed_modules_import(heading, library):
    listed = {name for row in table(heading) for name in code_names(row[0]) if name.endswith(".py")}
    using = {
        module
        for module, path in modules().items()
        if any(name == library or name.startswith(f"{library}.") for name in imports(path))
    }
    assert using == listed, (
        f"import {library} but unlisted: {sorted(using - listed)}; "
        f"listed but do not: {sorted(listed - using)}"
    )


def test_no_function_is_longer_than_the_limit():
    long = []
    for module, path in modules().items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = sum(1 for line in lines[node.lineno - 1 : node.end_lineno] if line.strip())
                if size > MAX_FUNCTION_LINES:
                    long.append(f"{module}:{node.lineno} {node.name} ({size} lines)")
    assert not long, "\n".join(long)


def test_no_mnist_name_is_spelled_outside_the_contract():
    """Tags and attributes are the contract's: a "mnist.*" string elsewhere spells one again."""
    spelled = []
    for module, path in modules().items():
        if module == "mnist_train/contract.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"""["']mnist\.[a-z_.]+["']""", line):
                spelled.append(f"{module}:{number}: {line.strip()}")
    assert not spelled, "\n".join(spelled)


def test_library_modules_leave_the_environment_alone():
    """Only a command's entry point and process.py set os.environ; everything else reads it."""
    writers = {"mnist_train/process.py", "mnist_train/cli.py", "analysis/cli.py"}
    writes = re.compile(
        r"os\.environ\[[^]]+\]\s*=|os\.environ\.(setdefault|update|pop)\(|os\.putenv"
    )
    found = []
    for module, path in modules().items():
        if module in writers:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if writes.search(line):
                found.append(f"{module}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
