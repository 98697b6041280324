"""The package's layering: imports run one way (cli -> training -> evaluation -> the library -> its base).

Every `import` / `from ... import` of a vidpress module, also the ones inside functions, is checked against the
layer table below; a new module must be placed in it (the test names any module it does not know). A name with a
leading underscore stays inside its module: what another module needs is public (or lives with its user).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vidpress"

# Each unit (a top-level module or subpackage of vidpress) and the units it may import. Read bottom-up: the base
# (types, files, video, inputs, tiny), the library (models, retrieval, presses, synthetic, serving), the helpers the
# front ends share (loading: models and presses by name; timing: prefill with and without a press; streaming: a
# live video answered from one KV cache), then
# evaluation, training and the command line on top. `testing` (test support) is imported by tests only.
ALLOWED = {
    "types": set(),
    "files": set(),
    "compat": set(),
    "video": {"types", "compat"},
    "inputs": {"video", "types"},
    "tiny": set(),
    "testing": {"tiny", "inputs", "video", "types", "compat"},
    "models": {"types"},
    "retrieval": {"models", "video", "files", "types"},
    "presses": {"retrieval", "models", "files", "types"},
    "synthetic": {"tiny", "inputs", "video", "types"},
    "serving": {"presses", "models", "types", "compat"},
    "loading": {"presses", "models", "tiny", "inputs", "video", "files", "types"},
    "timing": {"presses", "models", "inputs", "video", "types"},
    "streaming": {"presses", "models", "retrieval", "inputs", "video", "types"},
    "evaluation": {"streaming", "loading", "timing", "synthetic", "presses", "models", "retrieval", "serving", "inputs",
                   "video", "tiny", "files", "types", "compat"},
    "training": {"evaluation", "streaming", "loading", "timing", "synthetic", "presses", "models", "retrieval",
                 "inputs", "video", "tiny", "files", "types"},
    "cli": {"training", "evaluation", "streaming", "loading", "timing", "synthetic", "presses", "models", "retrieval",
            "inputs", "video", "tiny", "files", "types", "compat"},
    "__main__": {"cli"},
    "__init__": {"presses", "types", "compat"},  # the package's public names
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


def test_production_code_does_not_import_the_test_support():
    users = sorted(unit for unit, allowed in ALLOWED.items() if "testing" in allowed)
    assert not users, f"only tests import vidpress.testing; what the product needs belongs in vidpress.tiny: {users}"
    imports = [f"{path.relative_to(PACKAGE)} line {line}" for path in FILES if _unit(_module_name(path)) != "testing"
               for line, module in _imports(path) if _unit(module) == "testing"]
    assert not imports, "production modules import vidpress.testing: " + "; ".join(imports)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_one_way(path):
    unit = _unit(_module_name(path))
    wrong = [f"line {line}: {module}" for line, module in _imports(path)
             if _unit(module) not in ALLOWED[unit] | {unit} and module != "vidpress"]
    assert not wrong, f"{path.relative_to(PACKAGE)} ({unit}) may import only {sorted(ALLOWED[unit])}; it imports " + \
        "; ".join(wrong)


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_uses(path: Path) -> list[str]:
    """'line N: module._name' for every private name of another vidpress module that the file imports
    (`from vidpress.x import _y`) or reaches through an imported module (`x._y`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    modules, found = {}, []  # local name -> the vidpress module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                  + ([node.module] if node.module else []))
            if module != "vidpress" and not module.startswith("vidpress."):
                continue
            for alias in node.names:
                if _is_module(f"{module}.{alias.name}"):
                    modules[alias.asname or alias.name] = f"{module}.{alias.name}"
                    if _private(alias.name):
                        found.append(f"line {node.lineno}: module {module}.{alias.name}")
                elif _private(alias.name) and module != me:
                    found.append(f"line {node.lineno}: {module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("vidpress"):
                    if any(_private(part) for part in alias.name.split(".")):
                        found.append(f"line {node.lineno}: module {alias.name}")
                    modules[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else "vidpress"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            chain, value = [], node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in modules:
                owner = ".".join([modules[value.id], *reversed(chain)])
                if _is_module(owner) and owner != me:
                    found.append(f"line {node.lineno}: {owner}.{node.attr}")
    return found


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_private_names_stay_in_their_module(path):
    used = _private_uses(path)
    assert not used, f"{path.relative_to(PACKAGE)} uses private names of other modules (make them public or move " \
        "them): " + "; ".join(used)
