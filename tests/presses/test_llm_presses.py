"""Presses that drop tokens inside the LLM (FastV, PDrop): exact machinery, ranking rule, schedules."""

from dataclasses import dataclass

import pytest
import torch

from vidpress import presses
from vidpress.models import get_adapter
from vidpress.models.base import PressReport
from vidpress.models.layer_pruning import LayerPruner
from vidpress.presses import FastVPress, PDropPress
from vidpress.testing import FAMILIES, make_inputs, tiny_video
from vidpress.types import Selection

GENERATE = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
PRUNABLE = [f for f in FAMILIES if f != "qwen3_vl"]  # the tiny Qwen3-VL's 2 layers all take DeepStack features


@dataclass
class KeepAllAfterLayer(FastVPress):
    """Runs the whole pruning machinery (cut, re-pad, masks, positions, cache) but keeps every token."""

    def schedule(self, num_layers):
        return [(self.layer, 1.0)]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", PRUNABLE)
def test_pruning_machinery_keeping_everything_is_exact(tiny_model, family, attn):
    model, processor = tiny_model(family, attn)
    inputs = make_inputs(processor, [tiny_video(8, seed=1), tiny_video(8, seed=2)],
                         ["What happens?", "Which square moves fastest?"])
    with torch.no_grad():
        ref = model(**inputs).logits
        ref_gen = model.generate(**inputs, **GENERATE)
        with KeepAllAfterLayer(retention=0.5, layer=1)(model):
            out = model(**inputs).logits
            gen = model.generate(**inputs, **GENERATE)
    real = inputs["attention_mask"].bool()
    assert torch.allclose(out[real], ref[real], atol=1e-5, rtol=0)
    assert torch.equal(gen.sequences, ref_gen.sequences)
    for a, b in zip(gen.logits, ref_gen.logits):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["fastv", "pdrop"])
@pytest.mark.parametrize("family", PRUNABLE)
def test_batched_equals_per_sample_and_model_restored(tiny_model, family, name):
    model, processor = tiny_model(family, "sdpa")
    videos = [tiny_video(8, seed=1), tiny_video(8, seed=2)]
    questions = ["What happens?", "Which colour is the square that moves fastest in the video?"]
    single_inputs = make_inputs(processor, [videos[0]], questions[0])
    with torch.no_grad():
        ref = model(**single_inputs).logits
        press = presses.get(name, retention=0.6) if name == "pdrop" else FastVPress(retention=0.6, layer=1)
        with press(model) as pressed:
            singles = [model.generate(**make_inputs(processor, [v], q), **GENERATE) for v, q in zip(videos, questions)]
            batched = model.generate(**make_inputs(processor, videos, questions), **GENERATE)
            report = pressed.last_report
        assert report.layer_tokens is not None and len(report.layer_tokens) == len(get_adapter(model).text_layers())
        assert report.retention == pytest.approx(
            sum(report.layer_tokens) / len(report.layer_tokens) / report.visual_tokens_before)
        assert all(s.num_kept < s.num_tokens for s in report.selections)
        for i, single in enumerate(singles):
            assert torch.equal(single.sequences[0, -4:], batched.sequences[i, -4:])
            for a, b in zip(single.logits, batched.logits):
                assert torch.allclose(a[0], b[i], atol=1e-5, rtol=0)
        assert torch.equal(model(**single_inputs).logits, ref)
    for layer in get_adapter(model).text_layers():
        assert not layer._forward_pre_hooks and not hasattr(layer.self_attn, "_vidpress_owner")
        assert layer.self_attn.config is model.config.get_text_config()


def test_token_everyone_attends_to_is_kept(tiny_model):
    model, _ = tiny_model("qwen2_5_vl")
    adapter = get_adapter(model)
    pruner = LayerPruner(FastVPress(retention=0.55, layer=1), adapter)  # 2 layers: keep 10% after layer 1
    video = adapter.video_token_id
    ids = torch.tensor([[1] * 3 + [video] * 10 + [1] * 3])
    report = PressReport(selections=[Selection(torch.arange(10), 10)], extra_tokens=[0])
    pruner.begin(ids, None, report)
    L, heads, kv_heads, d = ids.shape[1], 4, 2, 8
    query = torch.zeros(1, heads, L, d)
    key = torch.zeros(1, kv_heads, L, d)
    query[0, :, -1, 0] = 5.0
    key[0, :, 3 + 6, 0] = 5.0  # video token 6 is the one the last token attends to, in every head
    pruner.record(query, key, scaling=1.0)
    pruner._prune(1, torch.zeros(1, L, 16))
    assert report.selections[0].keep_indices.tolist() == [6]
    assert report.layer_tokens == [10, 1]


def test_schedules_meet_the_requested_retention():
    assert FastVPress(retention=0.25, layer=2).schedule(28) == [(2, pytest.approx((0.25 * 28 - 2) / 26))]
    assert FastVPress(retention=0.05, layer=2).schedule(28) == [(2, 0.0)]  # below the 2/28 floor: one token per sample
    for retention in (0.6, 0.47, 0.3):
        stages = PDropPress(retention=retention).schedule(28)
        assert [layer for layer, _ in stages] == [7, 14, 21]
        spans = [7, 7, 7]
        average = (7 + sum(span * share for span, (_, share) in zip(spans, stages))) / 28
        assert average == pytest.approx(retention, abs=1e-9)
    shares = [share for _, share in PDropPress(retention=(1 + 0.5 + 0.25 + 0.125) / 4).schedule(28)]
    assert shares == pytest.approx([0.5, 0.25, 0.125])  # the paper's default pyramid


@pytest.mark.parametrize("knobs", [{"layer": 0}, {"layer": 1.5}])
def test_fastv_bad_knobs(knobs):
    with pytest.raises(ValueError, match="layer"):
        FastVPress(retention=0.5, **knobs)


def test_pdrop_bad_knobs():
    with pytest.raises(ValueError, match="stage_depths"):
        PDropPress(retention=0.5, stage_depths=(0.5, 0.25))


def test_layers_the_model_cannot_prune_are_a_clear_error(tiny_model):
    model, processor = tiny_model("qwen3_vl")
    with pytest.raises(ValueError, match="DeepStack"):
        FastVPress(retention=0.5, layer=1)(model).__enter__()
    with pytest.raises(ValueError, match="below the LLM's 2 layers"):
        FastVPress(retention=0.5, layer=2)(tiny_model("qwen2_5_vl")[0]).__enter__()


def test_prepared_inputs_can_run_twice(tiny_model):
    model, processor = tiny_model("qwen2_5_vl")
    inputs = make_inputs(processor, [tiny_video(8)], "What happens?")
    with torch.no_grad(), FastVPress(retention=0.6, layer=1)(model) as pressed:
        kwargs = pressed.prepare(inputs)
        with pressed.passthrough():
            first = model(**kwargs).logits
            second = model(**kwargs).logits
        assert torch.equal(first, second) and pressed.last_report.layer_tokens[-1] < pressed.last_report.layer_tokens[0]
