"""The lmms-eval bridge end to end: `--model vidpress` on a small local task with a tiny model and a press.

Skipped where lmms-eval is not installed (see docs/evaluation.md for the install line).
"""

import pytest
from fixtures_benchmarks import lmms_task

from vidpress.models.base import Adapter


@pytest.fixture
def lmms_eval(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # the task's data is a local JSON file
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return pytest.importorskip("lmms_eval")


@pytest.mark.slow
def test_lmms_eval_runs_a_task_with_a_pressed_model(lmms_eval, tiny_model, tiny_cache, tmp_path, monkeypatch):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager

    from vidpress.evaluation.lmms_eval_model import VidpressLMM

    assert get_model("vidpress") is VidpressLMM  # found through vidpress's entry point
    tiny_model("qwen2_5_vl")
    retentions = []
    press_inputs = Adapter.press_inputs

    def spy(self, press, inputs, for_generate):
        out, report = press_inputs(self, press, inputs, for_generate)
        retentions.append(report.retention)
        return out, report

    monkeypatch.setattr(Adapter, "press_inputs", spy)
    task = lmms_task(tmp_path / "task", questions=3)
    results = simple_evaluate(
        model="vidpress",
        model_args=f"pretrained={tiny_cache / 'qwen2_5_vl'},press=vidcom2,retention=0.25,max_frames_num=8",
        tasks=["vidpress_tiny_mc"],
        task_manager=TaskManager(include_path=str(task)),
        device="cpu",
        batch_size=1,
    )
    scores = results["results"]["vidpress_tiny_mc"]
    assert 0.0 <= scores["accuracy,none"] <= 1.0
    # every answer was pressed (0.25 + one token per frame)
    assert len(retentions) == 3 and all(r < 0.5 for r in retentions)


def test_lmms_eval_model_args_are_checked(lmms_eval, tiny_model, tiny_cache):
    from vidpress.evaluation.lmms_eval_model import VidpressLMM

    tiny_model("qwen2_5_vl")
    with pytest.raises(ValueError, match="unknown model_args \\['frames'\\]"):
        VidpressLMM(pretrained=str(tiny_cache / "qwen2_5_vl"), frames=8)
    with pytest.raises(ValueError, match="unknown press"):
        VidpressLMM(pretrained=str(tiny_cache / "qwen2_5_vl"), press="nope")
