"""The package's layering: imports run one way (cli -> training -> evaluation -> the library -> its base).

Every `import` / `from ... import` of a vidpress module, also the ones inside functions, is checked against the
layer table below; a new module must be placed in it (the test names any module it does not know).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vidpress"

# Each unit (a top-level module or subpackage of vidpress) and the units it may import. Read bottom-up: the base
# (types, video, inputs, testing), the library (models, retrieval, presses, synthetic, serving), the helpers the
# front ends share (loading: models and presses by name; timing: prefill with and without a press; streaming: a
# live video answered from one KV cache), then
# evaluation, training and the command line on top.
ALLOWED = {
    "types": set(),
    "_compat": set(),
    "video": {"types", "_compat"},
    "inputs": {"video", "types"},
    "testing": {"inputs", "video", "types", "_compat"},
    "models": {"types"},
    "retrieval": {"models", "video", "types"},
    "presses": {"retrieval", "models", "types"},
    "synthetic": {"testing", "inputs", "video", "types"},
    "serving": {"presses", "models", "types", "_compat"},
    "loading": {"presses", "models", "testing", "inputs", "video", "types"},
    "timing": {"presses", "models", "inputs", "video", "types"},
    "streaming": {"presses", "models", "retrieval", "inputs", "video", "types"},
    "evaluation": {"streaming", "loading", "timing", "synthetic", "presses", "models", "retrieval", "serving",
                   "inputs", "video", "testing", "types", "_compat"},
    "training": {"evaluation", "streaming", "loading", "timing", "synthetic", "presses", "models", "retrieval",
                 "inputs", "video", "testing", "types"},
    "cli": {"training", "evaluation", "streaming", "loading", "timing", "synthetic", "presses", "models", "retrieval",
            "inputs", "video", "testing", "types", "_compat"},
    "__main__": {"cli"},
    "__init__": {"presses", "types", "_compat"},  # the package's public names
}


def _unit(module: str) -> str:
    """'vidpress.presses.base' -> 'presses'; 'vidpress' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported vidpress module) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "vidpress":  # `from vidpress import presses`: the names are the modules
                found += [(node.lineno, f"vidpress.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
    return [(line, m) for line, m in found if m == "vidpress" or m.startswith("vidpress.")]


FILES = sorted(PACKAGE.rglob("*.py"))


def test_every_unit_is_placed():
    units = {_unit(_module_name(path)) for path in FILES}
    assert not units - set(ALLOWED), f"place these in ALLOWED (what may they import?): {sorted(units - set(ALLOWED))}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_one_way(path):
    unit = _unit(_module_name(path))
    wrong = [f"line {line}: {module}" for line, module in _imports(path)
             if _unit(module) not in ALLOWED[unit] | {unit} and module != "vidpress"]
    assert not wrong, f"{path.relative_to(PACKAGE)} ({unit}) may import only {sorted(ALLOWED[unit])}; it imports " + \
        "; ".join(wrong)
