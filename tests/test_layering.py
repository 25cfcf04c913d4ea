"""The library's layers (docs/architecture.md): a module imports only from its own layer or
below, the CLI is imported by nothing, and there is no import cycle. Lazy imports inside
functions count too: they are still dependencies."""
import ast
from pathlib import Path

import pytest

import minilm

ROOT = Path(minilm.__file__).resolve().parent

# Lowest first. A module name matches an entry equal to it or starting with "entry.".
LAYERS = [
    ["minilm.errors", "minilm.extras", "minilm.notices"],
    ["minilm.formats", "minilm.safetensors_file", "minilm.progress"],
    ["minilm.ops"],
    ["minilm.cuda"],
    ["minilm.backends", "minilm.cache", "minilm.weights", "minilm.generate"],
    ["minilm.models"],
    ["minilm.config"],
    ["minilm.gguf_file", "minilm.bnb_file", "minilm.torchao_file"],
    ["minilm.convert", "minilm.tokenizer"],
    ["minilm.default_model"],
    ["minilm.resolve"],
    ["minilm.loading"],
    ["minilm", "minilm.testing", "minilm.evaluate", "minilm.text", "minilm.chat"],
    ["minilm.masks", "minilm.parity", "minilm.bench", "minilm.attention"],
    ["minilm.gpu_check"],                      # uses bench's engines
    ["minilm.cli", "minilm.__main__"],
]


def module_name(path: Path) -> str:
    parts = ("minilm",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best = None
    for i, entries in enumerate(LAYERS):
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and (best is None or len(entry) > best[1]):
                best = (i, len(entry))
    assert best is not None, f"{module} is in no layer of tests/test_layering.py"
    return best[0]


def imports_of(path: Path) -> set[str]:
    """minilm modules imported anywhere in the file (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "minilm"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "minilm":
                continue
            for alias in node.names:           # `from . import bench` imports the module minilm.bench
                sub = f"{target}.{alias.name}"
                found.add(sub if (ROOT.parent / (sub.replace(".", "/") + ".py")).exists()
                          or (ROOT.parent / sub.replace(".", "/")).is_dir() else target)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            found.add("minilm.<__import__>")
    return found - {name}


GRAPH = {module_name(p): imports_of(p) for p in ROOT.rglob("*.py")}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_go_down_the_layers(module):
    upward = [m for m in GRAPH[module] if layer_of(m) > layer_of(module)]
    assert not upward, f"{module} (layer {layer_of(module)}) imports higher layers: {sorted(upward)}"


def test_nothing_imports_the_cli():
    assert not [m for m, deps in GRAPH.items() if "minilm.cli" in deps and m != "minilm.__main__"]   # its entry point


def test_no_import_cycles():
    state = {}

    def visit(module, stack):
        state[module] = "open"
        for dep in sorted(GRAPH.get(module, ())):
            if dep not in GRAPH:
                continue
            if state.get(dep) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, stack + [dep])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_negative_control_an_upward_import_is_caught(tmp_path, monkeypatch):
    assert layer_of("minilm.cli") > layer_of("minilm.bench")
    GRAPH["minilm.bench"] = GRAPH["minilm.bench"] | {"minilm.cli"}
    try:
        with pytest.raises(AssertionError, match="imports higher layers"):
            test_imports_go_down_the_layers("minilm.bench")
        with pytest.raises(AssertionError):
            test_nothing_imports_the_cli()
    finally:
        GRAPH["minilm.bench"] = GRAPH["minilm.bench"] - {"minilm.cli"}
