"""Imports run one way: cli -> training -> evaluation -> (synthetic | presses | models | retrieval) -> (video,
inputs, testing, types), imports inside functions included. Within the middle band presses may import retrieval
and models, retrieval may import models; loading and timing sit above that band, below evaluation."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vidpress"

#: layer -> the vidpress layers it may import (besides itself and the package root's shim)
ALLOWED = {
    "cli": {"training", "evaluation", "loading", "timing", "synthetic", "presses", "models", "retrieval", "video",
            "inputs", "testing", "types"},
    "training": {"evaluation", "loading", "timing", "synthetic", "presses", "models", "retrieval", "video", "inputs",
                 "testing", "types"},
    "evaluation": {"loading", "timing", "synthetic", "presses", "models", "retrieval", "video", "inputs", "testing",
                   "types"},
    "loading": {"presses", "models", "retrieval", "video", "inputs", "testing", "types"},
    "timing": {"presses", "models", "retrieval", "video", "inputs", "testing", "types"},
    "synthetic": {"video", "inputs", "testing", "types"},
    "presses": {"retrieval", "models", "video", "inputs", "testing", "types"},
    "retrieval": {"models", "video", "inputs", "testing", "types"},
    "models": {"video", "inputs", "testing", "types"},
    "inputs": {"video", "types"},
}


def _layer(name: str) -> str | None:
    """The layer of a dotted vidpress module name (None: the package root)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def _imports(path: Path) -> set[str]:
    """Every vidpress module `path` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "vidpress":  # `from vidpress import presses`
                found |= {f"vidpress.{alias.name}" for alias in node.names}
    return {name for name in found if name == "vidpress" or name.startswith("vidpress.")}


#: every layer named above; other modules (serving, _compat) are outside the rule
LAYERS = set(ALLOWED) | {"video", "testing", "types"}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_run_one_way(layer):
    paths = sorted((PACKAGE / layer).rglob("*.py")) if (PACKAGE / layer).is_dir() else [PACKAGE / f"{layer}.py"]
    wrong = [
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in paths
        for name in sorted(_imports(path))
        if _layer(name) in LAYERS - ALLOWED[layer] - {layer}
    ]
    assert not wrong, wrong
