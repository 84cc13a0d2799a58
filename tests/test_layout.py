"""The architecture, checked: layers import inward only, the surfaces reach the runner only
through its public face, only the MCP surface imports the MCP SDK, and no module, class or
function grows past the size where it starts to hide what it does (STYLE.md §1)."""

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "server" / "dispatch_runner"
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250
MAX_FUNCTION_LINES = 50

# innermost first; a module may import its own layer and the ones before it
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "core",
        frozenset(
            {
                "model",
                "policy",
                "allowance",
                "errors",
                "argv",
                "validate",
                "actions",
                "outputs",
                "events",
                "watch",
                "cron",
                "adaptive",
            }
        ),
    ),
    ("settings", frozenset({"config", "workspaces"})),
    ("store", frozenset({"store"})),
    ("launch", frozenset({"launch", "shim", "forkserver"})),  # the last two: pre-upgrade entry points
    ("runner", frozenset({"runner"})),
    ("surfaces", frozenset({"mcp", "cli", "web"})),
)
# what a surface must never touch, even though it sits outside them
SURFACE_FORBIDDEN = frozenset({"store", "launch", "workspaces"})


def layer_of(module: str) -> int:
    """`module` is dotted under the package: "runner.core", "store.sqlite.queue", "model"."""
    head = module.split(".")[0]
    for rank, (_, members) in enumerate(LAYERS):
        if head in members:
            return rank
    raise AssertionError(f"{module}: add its top-level name to LAYERS in tests/test_layout.py")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported(module: str, tree: ast.AST, *, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, target) for every import of our own package (relative or absolute) and of the
    MCP SDK (target "<mcp-sdk>"), at any depth (imports inside functions count)."""
    here = module.split(".") if module else []
    base = here if is_package else here[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from _classify(node.lineno, alias.name, [])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*parent, *(node.module.split(".") if node.module else [])])
                if node.module is None:  # from . import a, b: each may be a module
                    for alias in node.names:
                        yield node.lineno, f"{target}.{alias.name}".lstrip(".")
                else:
                    yield node.lineno, target
                    yield from _submodules(node.lineno, target, [a.name for a in node.names])
            else:
                yield from _classify(node.lineno, node.module or "", [a.name for a in node.names])


def _classify(line: int, name: str, names: list[str]) -> Iterator[tuple[int, str]]:
    if name == "mcp" or name.startswith(("mcp.", "mcp_types")):
        yield line, "<mcp-sdk>"
    elif name == "dispatch_runner":
        for n in names:
            yield line, n
    elif name.startswith("dispatch_runner."):
        target = name.removeprefix("dispatch_runner.")
        yield line, target
        yield from _submodules(line, target, names)


def _submodules(line: int, package: str, names: list[str]) -> Iterator[tuple[int, str]]:
    """`from ..runner import core`: the names that are modules of the package count too."""
    folder = PACKAGE.joinpath(*package.split("."))
    for n in names:
        if (folder / f"{n}.py").exists() or (folder / n / "__init__.py").exists():
            yield line, f"{package}.{n}"


def problems(module: str, source: str, *, is_package: bool = False) -> list[str]:
    """Every import of `module` that points outward, or past a surface's allowance."""
    tree = ast.parse(source)
    rank = layer_of(module)
    out = []
    for line, target in imported(module, tree, is_package=is_package):
        if target == "<mcp-sdk>":
            if module.split(".")[0] != "mcp":
                out.append(f"{module}:{line} imports the MCP SDK; only dispatch_runner.mcp may")
            continue
        if not target or target in ("__init__",) or target.split(".")[0] == "":
            continue
        head = target.split(".")[0]
        if head not in {m for _, members in LAYERS for m in members}:
            continue  # __version__ and the like, from the package's own __init__
        if layer_of(target) > rank:
            out.append(f"{module}:{line} imports {target}, a layer further out")
        if LAYERS[rank][0] == "surfaces":
            if head in SURFACE_FORBIDDEN:
                out.append(f"{module}:{line} imports {target}: surfaces use the runner's actions")
            if head == "runner" and target != "runner":
                out.append(f"{module}:{line} imports {target}: use dispatch_runner.runner's exports")
    return out


def sources() -> list[Path]:
    found = sorted(PACKAGE.rglob("*.py"))
    assert len(found) > 40, f"{PACKAGE}: the package's modules are not where this test looks"
    return found


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_inward(path: Path) -> None:
    module = module_name(path)
    if not module:
        return  # the package's own __init__: the version only
    assert problems(module, path.read_text(), is_package=path.name == "__init__.py") == []


def test_the_checker_sees_an_outward_import_and_a_surface_reaching_past_the_runner() -> None:
    assert problems("store.sqlite.queue", "from ...runner import Runner\n") == [
        "store.sqlite.queue:1 imports runner, a layer further out"
    ]
    assert problems("cli.main", "def f():\n    from ..store import open_store\n") == [
        "cli.main:2 imports store: surfaces use the runner's actions"
    ]
    assert problems("mcp.tools", "from ..runner.core import Core\n") == [
        "mcp.tools:1 imports runner.core: use dispatch_runner.runner's exports"
    ]
    assert problems("mcp.tools", "from ..runner import core, Runner\n") == [
        "mcp.tools:1 imports runner.core: use dispatch_runner.runner's exports"
    ]
    assert problems("cli.main", "from dispatch_runner.runner import service\n") == [
        "cli.main:1 imports runner.service: use dispatch_runner.runner's exports"
    ]
    assert problems("runner.core", "import mcp.server\n") == [
        "runner.core:1 imports the MCP SDK; only dispatch_runner.mcp may"
    ]
    assert problems("launch.shim", "from .. import argv\nfrom . import supervisor\n") == []
    assert problems("cli.main", "from dispatch_runner import runner\n") == []


def sizes(source: str) -> Iterator[tuple[str, int, int]]:
    """(what, lines, limit) of the module, each class and each function (nested ones included
    in their parent, and measured on their own too)."""
    tree = ast.parse(source)
    yield "module", source.count("\n"), MAX_MODULE_LINES
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno is not None
            yield f"class {node.name}", node.end_lineno - node.lineno + 1, MAX_CLASS_LINES
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            yield f"function {node.name}", node.end_lineno - node.lineno + 1, MAX_FUNCTION_LINES


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_class_or_function_outgrows_its_limit(path: Path) -> None:
    too_big = [
        f"{what}: {n} lines (limit {limit})" for what, n, limit in sizes(path.read_text()) if n > limit
    ]
    assert too_big == [], f"{path.relative_to(PACKAGE)}: split it by concern"


def test_the_size_check_counts_a_long_function() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    found = {what: n for what, n, _ in sizes(f"def long():\n{body}\n")}
    assert found["function long"] == 61


def test_a_shim_starts_light() -> None:
    """A per-run shim (and the fork server that forks shims) loads no config parser, event loop,
    validation or MCP SDK: it runs once per agent."""
    heavy = ("yaml", "anyio", "pydantic", "mcp", "rich", "psutil", "argcomplete")
    for module in (
        "dispatch_runner.launch.shim",
        "dispatch_runner.launch.forkserver",
        "dispatch_runner.shim",
    ):
        code = f"import sys, {module}; print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()}"
