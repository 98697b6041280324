"""The `press(model)` block itself: entered again, nested, and the model deep-copied inside it."""

import copy
import threading

import pytest
import torch

from vidpress.presses import FastVPress, VidCom2Press
from vidpress.testing import make_inputs, tiny_video

GREEDY = dict(max_new_tokens=3, do_sample=False)


@pytest.fixture
def qwen(tiny_model):
    model, processor = tiny_model("qwen2_5_vl")
    return model, make_inputs(processor, [tiny_video(8, seed=4)], "What happens?")


def hooks(model) -> dict:
    """Everything a press block installs, per module: hooks, instance attributes, attention routes."""
    return {name: (len(m._forward_pre_hooks), len(m._forward_hooks), sorted(k for k in vars(m) if "vidpress" in k),
                   m.config._attn_implementation if name.endswith("self_attn") else None,
                   "generate" in vars(m), "__deepcopy__" in vars(m))
            for name, m in model.named_modules()}


@pytest.mark.parametrize("press", [VidCom2Press(retention=0.5), FastVPress(retention=0.6, layer=1)],
                         ids=["before_llm", "in_llm"])
def test_a_deepcopy_inside_a_block_is_a_clean_unpressed_model(qwen, press):
    """A copy made inside the block is the model as it was before the block: no hooks, no generate wrapper, no
    pressed marker (it once kept all three forever, so it could never be pressed again)."""
    model, inputs = qwen
    with torch.no_grad():
        ref = model.generate(**inputs, **GREEDY)
        clean = hooks(model)  # after a first call: transformers may install its own hooks on first use
        with press(model):
            pressed_out = model.generate(**inputs, **GREEDY)
            twin = copy.deepcopy(model)
            assert hooks(twin) == clean
            assert torch.equal(twin.generate(**inputs, **GREEDY), ref)  # unpressed, while the original is pressed
            with press(twin):  # pressable inside the block, from the same thread
                assert torch.equal(twin.generate(**inputs, **GREEDY), pressed_out)
            assert torch.equal(model.generate(**inputs, **GREEDY), pressed_out)  # the original is still pressed
        assert hooks(model) == clean and hooks(twin) == clean
        with press(twin):  # and after the block
            assert torch.equal(twin.generate(**inputs, **GREEDY), pressed_out)
    assert twin.model.language_model.layers[0].self_attn is not model.model.language_model.layers[0].self_attn


def test_a_deepcopy_from_another_thread_can_be_pressed_there(qwen):
    """The thread error's advice, followed while the first thread's block is open: copy the model, press the copy."""
    model, inputs = qwen
    with torch.no_grad():
        ref = model.generate(**inputs, **GREEDY)
    results = {}

    def other():
        twin = copy.deepcopy(model)
        with torch.no_grad(), VidCom2Press(retention=0.5)(twin):
            results["out"] = twin.generate(**inputs, **GREEDY)

    with torch.no_grad(), VidCom2Press(retention=0.5)(model):
        own = model.generate(**inputs, **GREEDY)
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert torch.equal(results["out"], own) and not torch.equal(own, ref)


def test_one_block_entered_again(qwen):
    """`block = press(model)` can be entered again after it exits (it once failed with '_GeneratorContextManager'
    object has no attribute 'args'); entering it while it is open is the one-press-per-model error."""
    model, inputs = qwen
    clean = hooks(model)
    block = VidCom2Press(retention=0.5)(model)
    with torch.no_grad():
        with block as first:
            once = model.generate(**inputs, **GREEDY)
        with block as second:
            assert torch.equal(model.generate(**inputs, **GREEDY), once)
            assert second is not first and second.last_report.retention < 1
            with pytest.raises(RuntimeError, match="already inside a `with VidCom2Press"):
                with block:
                    pass
            assert torch.equal(model.generate(**inputs, **GREEDY), once)  # the refused entry changed nothing
        assert hooks(model) == clean
