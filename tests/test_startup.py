"""The torchvision fix at interpreter start (vidpress_torchvision.pth): import order does not matter."""

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

PTH = "vidpress_torchvision.pth"


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def test_the_pth_file_is_installed_in_site_packages():
    installed = Path(sysconfig.get_paths()["purelib"]) / PTH
    assert installed.is_file(), (f"{installed} is missing: reinstall vidpress (pip install -e .) "
                                 "to get the start-up hook")
    assert installed.read_text().strip() == (Path(__file__).parents[1] / PTH).read_text().strip()


def test_start_up_hook_is_lazy():
    # At start the hook is only a finder: no torch, no torchvision, no vidpress imported.
    code = ("import sys; print('torch' in sys.modules, 'vidpress' in sys.modules, "
            "any(type(f).__name__ == '_BeforeTorchvision' for f in sys.meta_path))")
    assert run_python(code).stdout.split() == ["False", "False", "True"]
    assert run_python(code, VIDPRESS_NO_TORCHVISION_FIX="1").stdout.split() == ["False", "False", "False"]


@pytest.mark.slow
def test_transformers_model_class_before_vidpress():
    # The order the README's snippet would fail in without the hook: the Qwen-VL class (and a processor) first.
    code = ("from transformers import AutoVideoProcessor, Qwen2_5_VLForConditionalGeneration\n"
            "import sys, torchvision\n"
            "assert 'vidpress' not in sys.modules\n"
            "assert not any(type(f).__name__ == '_BeforeTorchvision' for f in sys.meta_path)  # ran once, gone\n"
            "import vidpress\n"
            "print('ok')")
    done = run_python(code)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_the_fix_keeps_torchvision_untouched_where_its_ops_load(monkeypatch):
    # Where the compiled ops load, the fix is that load: no fallback schema is defined.
    import torch

    import _vidpress_torchvision as hook

    loaded = []
    monkeypatch.setattr(hook, "_fallback_library", None)
    monkeypatch.setattr(torch.ops, "load_library", loaded.append)
    monkeypatch.setattr(torch.library, "Library", lambda *a: pytest.fail("defined a fallback schema"))
    hook.ensure_torchvision_importable()
    assert len(loaded) == 1 and Path(loaded[0]).name.startswith("_C")
