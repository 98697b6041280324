"""PlannedPress: the tool that makes the model see tokens chosen beforehand (training loops)."""

import pytest
import torch

from vidpress import presses
from vidpress.models import get_adapter
from vidpress.presses import PlannedPress
from vidpress.testing import make_inputs, tiny_video


def test_is_a_tool_not_a_registered_method():
    assert PlannedPress.name is None and PlannedPress not in presses.PRESSES.values()


def test_keeps_the_plans_in_call_order(tiny_model):
    model, processor = tiny_model("qwen2_5_vl")
    inputs = make_inputs(processor, [tiny_video(8, seed=1), tiny_video(8, seed=2)], ["What happens?", "Why?"])
    plans = [torch.tensor([0, 5, 15]), torch.tensor([2])]
    press = PlannedPress(retention=0.5, plans=list(plans))
    pressed, report = get_adapter(model).press_inputs(press, dict(inputs), for_generate=False)
    assert [s.keep_indices.tolist() for s in report.selections] == [p.tolist() for p in plans]
    assert not press.plans  # consumed
    assert int((pressed["input_ids"] == model.config.video_token_id).sum()) == 4
    with pytest.raises(ValueError, match="no plan left"):
        get_adapter(model).press_inputs(press, dict(inputs), for_generate=False)
    untouched = PlannedPress(retention=1.0, plans=list(plans))
    get_adapter(model).press_inputs(untouched, dict(inputs), for_generate=False)
    assert len(untouched.plans) == 2  # at retention 1 every token is kept and no plan is used
