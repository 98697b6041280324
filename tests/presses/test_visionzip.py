"""VisionZip: the rule on hand-made statistics, the vision-encoder recorder against direct computations, and the
press on every model family (identity at retention 1, budgets, batching, model restored)."""

import sys

import pytest
import torch
import torch.nn.functional as F

from vidpress import presses
from vidpress.models import get_adapter
from vidpress.models.vision_stats import VisionStatsRecorder
from vidpress.presses import VisionZipPress
from vidpress.testing import FAMILIES, make_inputs, tiny_model_and_processor, tiny_video
from vidpress.types import VideoTokens

GENERATE = dict(max_new_tokens=2, do_sample=False, output_logits=True, return_dict_in_generate=True)


def vision_attentions(model) -> list[torch.nn.Module]:
    adapter = get_adapter(model)
    if family_of(model).startswith("qwen"):
        return [block.attn for block in adapter.base.visual.blocks]
    return [layer.self_attn for layer in adapter.vision_layers()]


def family_of(model) -> str:
    return model.config.model_type


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# --- the rule on hand-made statistics ------------------------------------------------------------------------

def test_select_keeps_dominant_and_merges_into_most_key_similar_target():
    # one frame of 8 tokens, budget 4 = 2 dominant + 2 contextual
    T, M, D = 1, 8, 3
    features = torch.arange(T * M * D, dtype=torch.float32).view(T, M, D)
    attention = torch.tensor([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0, 0.8, 0.0]])  # tokens 1 and 6 receive the most
    # rest in raster order: 0, 2, 3, 4, 5, 7 (n = 6); targets at ranks arange(0, 6, 6 // 2) = 0, 3 -> tokens 0 and 4
    keys = torch.zeros(T, M, 2)
    keys[0, :, 0] = 1.0
    keys[0, 4] = torch.tensor([0.0, 1.0])
    keys[0, 5] = torch.tensor([0.1, 1.0])  # the only token closer to target 4 than to target 0
    tokens = VideoTokens(features, (T, 2, 4), side_features={"vision_attention": attention, "vision_keys": keys})
    sel = VisionZipPress(retention=0.5, dominant_ratio=0.5).select(tokens)
    assert sel.keep_indices.tolist() == [0, 1, 4, 6]
    assert sel.num_kept == 4 and sel.frame_budgets.tolist() == [4]
    x = features[0]
    expected = torch.stack([x[0] + (x[2] + x[3] + x[7]) / 3, x[1], x[4] + x[5], x[6]])  # released: target + mean
    assert torch.allclose(sel.features, expected)


def test_budget_split_and_effective_retention():
    g = torch.Generator().manual_seed(0)
    T, M = 6, 10
    tokens = VideoTokens(
        torch.randn(T, M, 8, generator=g), (T, 2, 5),
        side_features={"vision_attention": torch.rand(T, M, generator=g),
                       "vision_keys": torch.randn(T, M, 4, generator=g)},
    )
    for R in (0.05, 0.25, 0.37, 0.5, 0.9):
        sel = presses.get("visionzip", retention=R).select(tokens)
        assert sel.num_kept == round(R * T * M) and abs(sel.retention - R) <= 0.02
        assert sel.frame_budgets.sum() == sel.num_kept and sel.frame_budgets.max() - sel.frame_budgets.min() <= 1
        assert torch.equal(torch.bincount(sel.keep_indices // M, minlength=T), sel.frame_budgets)
    # dominant_ratio 1: pure top-attention selection per frame, features untouched
    sel = VisionZipPress(retention=0.3, dominant_ratio=1.0).select(tokens)
    top = tokens.side_features["vision_attention"].topk(3, dim=1).indices + torch.arange(T)[:, None] * M
    assert sel.keep_indices.tolist() == sorted(top.flatten().tolist())
    assert torch.equal(sel.features, tokens.features.view(T * M, -1)[sel.keep_indices])


def test_select_without_statistics_says_how_to_get_them():
    tokens = VideoTokens(torch.randn(2, 4, 8), (2, 2, 2))
    with pytest.raises(ValueError, match="vision-encoder statistics.*press\\(model\\)"):
        VisionZipPress(retention=0.5).select(tokens)
    assert VisionZipPress(retention=1.0).select(tokens).num_kept == 8  # retention 1 needs nothing


@pytest.mark.parametrize("knobs", [{"dominant_ratio": 1.5}, {"dominant_ratio": -0.1},
                                   {"vision_layer": 1.5}, {"vision_layer": True}])
def test_bad_knobs(knobs):
    with pytest.raises(ValueError, match=next(iter(knobs))):
        VisionZipPress(**knobs)


# --- the press on every family ------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_identity_budget_and_restored(tiny_model, family):
    model, processor = tiny_model(family, "eager")
    inputs = make_inputs(processor, [tiny_video(8)], "What happens?")
    attentions = vision_attentions(model)
    configs = [a.config for a in attentions]
    with torch.no_grad():
        ref = model(**inputs).logits
        hooks = hook_count(model)  # transformers installs its output-capturing hooks on the first call
        with VisionZipPress(retention=1.0)(model):
            assert torch.equal(model(**inputs).logits, ref)
        with VisionZipPress(retention=0.25)(model) as pressed:
            model(**inputs)
            gen = model.generate(**inputs, **GENERATE)
            report = pressed.last_report
        assert gen.sequences.shape[1] == inputs["input_ids"].shape[1] + 2
        for selection, video in zip(report.selections, report.videos):
            assert selection.num_kept == round(0.25 * video.num_tokens)
            assert selection.features is not None and selection.features.shape[0] == selection.num_kept
        assert torch.equal(model(**inputs).logits, ref)
    assert [a.config for a in attentions] == configs and all(a.config is c for a, c in zip(attentions, configs))
    assert not any(hasattr(a, "_vidpress_owner") for a in attentions)
    assert hook_count(model) == hooks


@pytest.mark.parametrize("family", FAMILIES)
def test_statistics_agree_across_attention_implementations(tiny_model, family):
    # eager hands its own probabilities to the recorder; sdpa's are recomputed from q and k
    stats = {}
    for attn in ("eager", "sdpa"):
        model, processor = tiny_model(family, attn)
        inputs = make_inputs(processor, [tiny_video(8, seed=3)], "What happens?")
        with torch.no_grad(), VisionZipPress(retention=0.5)(model) as pressed:
            model(**inputs)
        stats[attn] = pressed.last_report.videos[0].side_features
    for name in ("vision_attention", "vision_keys"):
        assert torch.allclose(stats["eager"][name], stats["sdpa"][name], atol=1e-5, rtol=1e-4), name


def test_batched_equals_per_sample(tiny_model):
    model, processor = tiny_model("qwen2_vl", "sdpa")
    videos = [tiny_video(8, seed=1), tiny_video(12, seed=2)]
    questions = ["What happens?", "Which colour is the square that moves fastest in the video?"]
    with torch.no_grad(), VisionZipPress(retention=0.3)(model) as pressed:
        singles, kept = [], []
        for video, question in zip(videos, questions):
            singles.append(model.generate(**make_inputs(processor, [video], question), **GENERATE))
            kept.append((pressed.last_report.selections[0], pressed.last_report.videos[0]))
        batched = model.generate(**make_inputs(processor, videos, questions), **GENERATE)
        for (single, video), selection, batch_video in zip(kept, pressed.last_report.selections,
                                                           pressed.last_report.videos):
            assert torch.equal(single.keep_indices, selection.keep_indices)
            assert torch.allclose(video.side_features["vision_attention"],
                                  batch_video.side_features["vision_attention"], atol=1e-6)
    for i, single in enumerate(singles):
        assert torch.equal(single.sequences[0, -2:], batched.sequences[i, -2:])
        for a, b in zip(single.logits, batched.logits):
            assert torch.allclose(a[0], b[i], atol=1e-5, rtol=0)


def test_precomputed_features_need_recorded_statistics(tiny_model):
    model, processor = tiny_model("llava_onevision", "eager")
    inputs = dict(make_inputs(processor, [tiny_video(8)], "What happens?"))
    adapter = get_adapter(model)
    text = {k: v for k, v in inputs.items() if k != "pixel_values_videos"}
    press = VisionZipPress(retention=0.5)
    with torch.no_grad(), press(model):
        ref = model(**inputs).logits
        with pytest.raises(ValueError, match="pre-computed.*encode_with_vision_stats"):
            model(**text, mm_encoder_outputs={"video": adapter.encode("video", inputs)})
        encoded = adapter.encode_with_vision_stats(inputs)  # what `vidpress bench` and the timing helpers use
        assert torch.equal(model(**text, mm_encoder_outputs={"video": encoded}).logits, ref)
    with torch.no_grad(), pytest.raises(ValueError, match="block 0"):
        with VisionZipPress(retention=0.5, vision_layer=0)(model):
            model(**text, mm_encoder_outputs={"video": encoded})
    with pytest.raises(ValueError, match="vision_layer"):
        adapter.vision_attention(5)


def test_recorder_restores_the_module_on_exceptions(tiny_model):
    model, _ = tiny_model("llava_onevision", "eager")
    attention = vision_attentions(model)[-1]
    config = attention.config
    with pytest.raises(KeyError), VisionStatsRecorder(attention):
        assert attention.config is not config
        raise KeyError
    assert attention.config is config and not hasattr(attention, "_vidpress_owner")


# --- the recorder's mapping against direct computations ------------------------------------------------------

def _direct_qwen_stats(model, inputs, layer: int):
    """Received attention / keys per merged token in (t, h, w) order, computed from the vision block's own q / k,
    with the encoder -> raster permutation recovered by matching merger rows to the model's output rows."""
    visual = model.model.visual
    attn = visual.blocks[layer].attn
    captured = {}
    pre = attn.register_forward_pre_hook(lambda m, a, kw: captured.update(x=a[0] if a else kw["hidden_states"], **kw),
                                         with_kwargs=True)
    post = visual.merger.register_forward_hook(lambda m, a, out: captured.update(merged=out))
    try:
        with torch.no_grad():
            raster = model.model.get_video_features(inputs["pixel_values_videos"],
                                                    inputs["video_grid_thw"]).pooler_output
    finally:
        pre.remove(), post.remove()
    x, (cos, sin), cu = captured["x"], captured["position_embeddings"], captured["cu_seqlens"].tolist()
    n, H = x.shape[0], attn.num_heads
    q, k, _ = attn.qkv(x).reshape(n, 3, H, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = sys.modules[type(attn).__module__].apply_rotary_pos_emb_vision(q, k, cos, sin)
    q, k = q.transpose(0, 1).float(), k.transpose(0, 1).float()  # [H, n, d]
    received = torch.cat([
        torch.softmax(q[:, a:b] @ k[:, a:b].transpose(1, 2) * attn.scaling, dim=-1).mean(dim=(0, 1))
        for a, b in zip(cu[:-1], cu[1:])
    ])
    unit = visual.spatial_merge_size**2
    received = received.view(-1, unit).mean(1)
    keys = k.mean(0).view(-1, unit, k.shape[-1]).mean(1)
    raster = torch.cat(raster)
    order = torch.cdist(raster, captured["merged"]).argmin(1)  # raster row j = encoder row order[j]
    assert torch.equal(raster, captured["merged"][order])
    return received[order], keys[order], order


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_recorder_matches_direct_computation(family):
    # Qwen2.5-VL with 56 px windows on 112 px frames: 4 windows per frame, so the encoder order is not the raster
    # order (block 0 attends within windows, block 1 over whole frames)
    vision = {"window_size": 56} if family == "qwen2_5_vl" else None
    model, processor = tiny_model_and_processor(family, vision_config=vision)
    inputs = make_inputs(processor, [tiny_video(4, 112, 112, seed=1), tiny_video(6, 112, 84, seed=2)], "What happens?")
    for layer in (None, 0):
        with torch.no_grad(), VisionZipPress(retention=0.5, vision_layer=layer)(model) as pressed:
            model(**inputs)
        videos = pressed.last_report.videos
        recorded_attention = torch.cat([v.side_features["vision_attention"].flatten() for v in videos])
        recorded_keys = torch.cat([v.side_features["vision_keys"].flatten(0, 1) for v in videos])
        received, keys, order = _direct_qwen_stats(model, inputs, -1 if layer is None else layer)
        if family == "qwen2_5_vl":
            assert not torch.equal(order, torch.arange(order.numel()))  # the window permutation is exercised
        assert torch.allclose(recorded_attention, received, atol=1e-6), layer
        assert torch.allclose(recorded_keys, keys, atol=1e-5), layer


@pytest.mark.parametrize("family", ["llava_onevision", "llava_next_video"])
def test_llava_recorder_matches_output_attentions(tiny_model, family):
    model, processor = tiny_model(family, "eager")
    inputs = make_inputs(processor, [tiny_video(8, seed=4)], "What happens?")
    with torch.no_grad():
        with VisionZipPress(retention=0.5)(model) as pressed:
            model(**inputs)
        frames = inputs["pixel_values_videos"].flatten(0, 1)
        attentions = model.model.vision_tower(frames, output_attentions=True).attentions
    recorded = pressed.last_report.videos[0].side_features["vision_attention"]  # [T, M]
    if family == "llava_onevision":  # SigLIP, no [CLS], last layer, all patches -> 2x2 bilinear pooling
        per_patch = attentions[-1].mean(dim=(1, 2)).view(-1, 1, 4, 4)
        expected = F.interpolate(per_patch, size=[2, 2], mode="bilinear")
    else:  # CLIP: [CLS] row of layer -2 (block 0), [CLS] dropped -> 2x2 average pooling
        per_patch = attentions[0][:, :, 0, 1:].mean(dim=1).view(-1, 1, 4, 4)
        expected = F.avg_pool2d(per_patch, 2)
    assert torch.allclose(recorded, expected.flatten(1), atol=1e-6)
