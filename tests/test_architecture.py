"""The shape of workflow_lib: layers that only look down, short functions, explained lazy imports.

The job layer (``stages.py``, the jobs; ``cli.py``, the commands) sits on top of the library
modules; a library module that imported it would make the jobs a helper library and invite
import cycles, which Python hides until an import order breaks. The graph is read with ``ast``
from every import, module-level and inside functions, so a cycle hidden by a function-level
import is found too.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "workflow_lib"
JOB_LAYER = frozenset({"stages", "cli"})
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.glob("*.py"))}


def _imported_modules(node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The workflow_lib modules one import statement names (``from . import x`` names x)."""
    if isinstance(node, ast.Import):
        parts = [alias.name.split(".") for alias in node.names]
        return {p[1] for p in parts if p[0] == "workflow_lib" and len(p) > 1}
    if node.level == 0:
        if not node.module or node.module.split(".")[0] != "workflow_lib":
            return set()
        parts = node.module.split(".")
    elif node.level == 1:
        parts = ["workflow_lib", *(node.module.split(".") if node.module else [])]
    else:
        return set()
    if len(parts) > 1:
        return {parts[1]}
    return {alias.name for alias in node.names if alias.name in known}


def import_graph() -> dict[str, set[str]]:
    """{module: the workflow_lib modules it imports anywhere in its text}."""
    trees = _modules()
    known = set(trees)
    graph = {}
    for name, tree in trees.items():
        imports = (n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom))
        graph[name] = set().union(*(_imported_modules(n, known) for n in imports)) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def functions() -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(module, function) for every function and method, nested ones included."""
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield name, node


def function_length(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from ``def`` to the last line of the body (docstring and comments included)."""
    return node.end_lineno - node.lineno + 1


def _says_something(comment: str) -> bool:
    """A comment with words besides a linter directive (``# noqa: F401`` alone is no reason)."""
    text = _DIRECTIVE.sub("", comment.lstrip("#"))
    return any(character.isalpha() for character in text)


_DIRECTIVE = re.compile(r"noqa(:\s*[A-Z]+[0-9]+(\s*,\s*[A-Z]+[0-9]+)*)?|type:\s*ignore(\[[^\]]*\])?")


def unexplained_lazy_imports(path: Path) -> list[str]:
    """Imports inside a function without a reason next to them.

    The rule: an import statement inside a function needs a comment on its own first line, or
    on the line right above it, that says something (not only a linter directive). A run of
    such imports (blank lines between its groups allowed, as the import sorter writes them)
    counts as one: a comment above its first line explains them all.
    """
    text = path.read_text()
    commented = {
        token.start[0]
        for token in tokenize.generate_tokens(io.StringIO(text).readline)
        if token.type == tokenize.COMMENT and _says_something(token.string)
    }
    lines = text.splitlines()
    tree = ast.parse(text)
    lazy = sorted(
        {
            sub
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            for sub in ast.walk(node)
            if isinstance(sub, ast.Import | ast.ImportFrom)
        },
        key=lambda n: n.lineno,
    )
    import_lines = {line for n in lazy for line in range(n.lineno, n.end_lineno + 1)}
    problems = []
    for node in lazy:
        above = node.lineno - 1
        while above > 0 and (above in import_lines or not lines[above - 1].strip()):
            above -= 1  # up to the line above the run
        own_comment = node.lineno in commented
        comment_above = above in commented and lines[above - 1].lstrip().startswith("#")
        if not (own_comment or comment_above):
            problems.append(f"{path.stem}.py:{node.lineno}: {ast.unparse(node)}")
    return problems


def test_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_library_modules_never_import_the_job_layer() -> None:
    offenders = {
        module: sorted(targets & JOB_LAYER)
        for module, targets in import_graph().items()
        if module not in JOB_LAYER and targets & JOB_LAYER
    }
    assert offenders == {}


def test_no_function_over_60_lines() -> None:
    too_long = sorted(
        (f"{module}.{node.name}", function_length(node))
        for module, node in functions()
        if function_length(node) > MAX_FUNCTION_LINES
    )
    assert too_long == []


def test_every_import_inside_a_function_says_why_it_is_lazy() -> None:
    problems = [p for path in sorted(PACKAGE.glob("*.py")) for p in unexplained_lazy_imports(path)]
    assert problems == []


# --- the checks themselves find what they look for -------------------------------------------


def test_a_cycle_and_a_job_layer_import_are_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "export": {"stages"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize(
    ("source", "problems"),
    [
        ("def f():\n    import torch\n", 1),
        ("def f():\n    import torch  # noqa: F401\n", 1),
        ("def f():\n    import torch  # noqa: F401 - is torch installed?\n", 0),
        ("def f():\n    import torch  # heavy: the ONNX path must not pay for it\n", 0),
        (
            "def f():\n    # plots only\n    import matplotlib\n    import matplotlib.ticker\n",
            0,
        ),
        ("def f():\n    x = 1  # not about the import\n    import torch\n", 1),
        ("import torch\n\n\ndef f():\n    return torch\n", 0),
    ],
)
def test_the_lazy_import_rule(tmp_path: Path, source: str, problems: int) -> None:
    path = tmp_path / "module.py"
    path.write_text(source)
    assert len(unexplained_lazy_imports(path)) == problems


def test_relative_and_absolute_imports_are_edges() -> None:
    known = {"stages", "io"}
    assert _imported_modules(ast.parse("from .stages import x").body[0], known) == {"stages"}
    assert _imported_modules(ast.parse("from . import io").body[0], known) == {"io"}
    assert _imported_modules(ast.parse("import workflow_lib.stages").body[0], known) == {"stages"}
    assert _imported_modules(ast.parse("from workflow_lib import stages").body[0], known) == {"stages"}
    assert _imported_modules(ast.parse("import numpy").body[0], known) == set()
