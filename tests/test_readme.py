"""The README's Python snippet runs as written (extracted from README.md), and on another saved model folder."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


def snippet() -> str:
    text = README.read_text()
    section = text[text.index("## Use it from Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_snippet_runs_as_written(tmp_path):
    # A fresh interpreter in an empty folder: the transformers import comes first, as the snippet has it.
    done = subprocess.run([sys.executable, "-c", snippet()], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    answer, tokens = done.stdout.strip().splitlines()[-2:]
    assert answer.startswith("[") and answer.endswith("]")
    before, after = (int(n) for n in tokens.split(" -> "))
    assert 0 < after < before and abs(after / before - 0.25) < 0.05


def test_readme_snippet_on_a_tiny_saved_model(tmp_path, capsys):
    from vidpress.testing import build_tiny_model

    folder = build_tiny_model("qwen2_5_vl", tmp_path / "tiny-qwen")
    code = snippet()
    assert code.count("path = REFERENCE_DIR") == 1
    exec(code.replace("path = REFERENCE_DIR", f"path = {str(folder)!r}"), {})
    before, after = (int(n) for n in capsys.readouterr().out.strip().splitlines()[-1].split(" -> "))
    assert 0 < after < before


def test_the_press_guide_table_is_generated_from_the_registry():
    """README's "Which press should I use?" table equals scripts/press_guide.py's output: a press merged later
    shows up by re-running the script (this test names the command when the table is stale)."""
    done = subprocess.run([sys.executable, str(README.parent / "scripts" / "press_guide.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
