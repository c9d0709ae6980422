"""The source layout keeps its promises: no import cycle among the modules, and no module over 400 lines.

The imports are read with `ast` (nothing is imported or run), including the imports inside functions: a lazy import
still ties two modules together, and a cycle through one is a cycle a reader has to walk.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "autotrain"
MAX_LINES = 400


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules that `name` imports, resolved to the longest known module name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    resolved = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name and not name.startswith(target + "."):
            resolved.add(target)  # importing one's own package's face is not an edge
    return resolved


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_the_cycle_finder_finds_a_planted_cycle():
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(planted) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_reader_sees_lazy_and_relative_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from autotrain.x import y\n    import autotrain.z\nfrom . import w\n")
    known = {"autotrain.x", "autotrain.x.y", "autotrain.z", "autotrain.w", "autotrain.m"}
    assert imports("autotrain.m", source, known) == {"autotrain.x", "autotrain.x.y", "autotrain.z", "autotrain.w"}


def test_no_import_cycle_among_source_modules():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_source_module_over_400_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


# --- One place for each job that was written more than once -------------------------------------------------------


def places(predicate) -> set[str]:
    """The source modules whose code holds a node for which `predicate(node)` is true."""
    found = set()
    for name, path in modules().items():
        if any(predicate(node) for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))):
            found.add(name)
    return found


def calls_attribute(node: ast.AST, *names: str) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in names


def test_models_and_tokenizers_are_loaded_in_one_module():
    """Training, the reference, inference and the merge of a saved adapter load through autotrain.models (the
    embedded GGUF's one-time conversion, autotrain.defaults, is the other end of that pipe)."""
    assert places(lambda node: calls_attribute(node, "from_pretrained")) == {"autotrain.models", "autotrain.defaults"}


def test_one_way_back_from_a_wrapped_model():
    assert places(lambda node: calls_attribute(node, "get_base_model", "unwrap_model")) == {"autotrain.models"}


def test_one_closest_name_helper():
    imported = lambda node: isinstance(node, ast.Import | ast.ImportFrom) and "difflib" in (  # noqa: E731
        [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module])
    assert places(imported) == {"autotrain.errors"}


def test_one_generate_call():
    """The sample answers, --inference and `aitraining chat` answer through answers.continuation: one place decides
    the decoding settings, the stop tokens and the room left in the model's positions."""
    assert places(lambda node: calls_attribute(node, "generate")) == {"autotrain.answers"}
