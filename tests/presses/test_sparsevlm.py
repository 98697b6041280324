"""SparseVLM: the released rule (raters, the pruning layer's own attention rows, recycling, schedule), checked against
the model's own `output_attentions` and hand-computed cases."""

import dataclasses

import pytest
import torch

from vidpress import presses
from vidpress.presses import VidCom2Press, fca
from vidpress.presses.sparsevlm import PRESETS, SparseVLMPress, recycled_count
from vidpress.testing import make_inputs, tiny_model_and_processor, tiny_video

QUESTIONS = ["What happens?", "Which colour is the square that moves fastest in the video?"]
PRUNABLE = ["qwen2_5_vl", "qwen2_vl", "llava_onevision", "llava_next_video"]


@pytest.fixture(scope="module")
def deep_models():
    """Eager tiny models with 4 LLM layers, so three pruning layers (0, 1, 2) each have a later layer."""
    cache = {}

    def get(family):
        if family not in cache:
            model, processor = tiny_model_and_processor(family, text_config={"num_hidden_layers": 4})
            model.set_attn_implementation("eager")
            cache[family] = model, processor
        return cache[family]

    return get


# --- the released math on hand-built inputs ------------------------------------------------------------------------

def test_raters_are_the_text_tokens_above_the_mean_relevance():
    visual = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[3.0, 0.0], [0.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    relevance = torch.softmax(visual @ text.T, dim=1).mean(0)  # S = E_v E_t^T, softmax over the text, mean over N
    expected = relevance > relevance.mean()
    assert expected.tolist() == [True, False, True, False]  # by hand: r = (0.609, 0.028, 0.284, 0.079), mean 0.25
    assert torch.equal(SparseVLMPress().raters(visual, text), expected)
    # constant relevance: no token is strictly above the mean -> every text token rates; the paper's >= agrees
    same = torch.ones(3, 2)
    assert SparseVLMPress().raters(visual, same).all() and SparseVLMPress(variant="paper").raters(visual, same).all()


def test_recycling_is_dpc_knn_with_mean_merging():
    # 1-D points, 3 clusters (k-NN size 3): densities exp(-mean of the 3 smallest d^2) order 10.5 > 10 > 1 > 12 > 0 > 3;
    # delta = distance to the nearest denser point (the densest: the largest distance, 12); rho * delta ranks
    # 10.5 (5.21), 1 (1.70), 12 (0.19) as centres; each point joins its nearest centre.
    x = torch.tensor([[0.0], [1.0], [3.0], [10.0], [10.5], [12.0]])
    merged, centres = SparseVLMPress().merge(x, 3)
    assert centres.tolist() == [4, 1, 5]
    assert torch.allclose(merged, torch.tensor([[10.25], [4 / 3], [12.0]]))
    # the paper's variant: cosine assignment (all points point the same way: the first centre) and the SUM
    merged, centres = SparseVLMPress(variant="paper").merge(x, 3)
    assert centres.tolist() == [4, 1, 5] and torch.allclose(merged, torch.tensor([[23.5], [1.0], [12.0]]))
    # the model's dtype is kept
    assert SparseVLMPress().merge(x.half(), 3)[0].dtype == torch.float16


def test_recycled_counts_and_budget_split():
    assert recycled_count(1) == (1, 1) and recycled_count(127) == (39, 4) and recycled_count(2048 - 12) == (611, 62)
    press = SparseVLMPress()
    assert press.split_budget(128, 128) == (128, 0)  # the budget covers every token: nothing happens
    kept, clusters = press.split_budget(60, 128)  # kept + merged = the stage's budget
    assert kept + clusters == 60 and clusters == recycled_count(128 - kept)[1]
    assert press.split_budget(2, 128) == (2, 0)  # no room for merged tokens next to a kept one
    assert SparseVLMPress(recycle=False).split_budget(60, 128) == (60, 0)
    assert SparseVLMPress(budget="preset").split_budget(60, 128) == (60, recycled_count(68)[1])


# --- the schedule ----------------------------------------------------------------------------------------------------

def test_the_released_preset_is_reproduced_and_scaled():
    # R = 192 / 576 at depth 32: the released lists (300, 200, 110) after layers 2, 6, 15
    schedule = SparseVLMPress(retention=192 / 576, budget="preset").schedule(32)
    assert [layer for layer, _ in schedule] == [3, 7, 16]
    assert [round(q * 576) for _, q in schedule] == list(PRESETS[192])
    # R = 0.25: the 128 preset's shape times 1.125; R = 0.15: the 96 preset's times 0.9
    assert [q for _, q in SparseVLMPress(retention=0.25, budget="preset").schedule(28)] == pytest.approx(
        [303 * 0.25 / 128, 110 * 0.25 / 128, 36 * 0.25 / 128])
    assert SparseVLMPress(retention=0.15).preset() == 96 and SparseVLMPress(retention=0.10).preset() == 64


@pytest.mark.parametrize("R", [0.15, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("layers", [28, 32])
def test_layer_average_budget_meets_the_retention_with_the_preset_shape(R, layers):
    schedule = SparseVLMPress(retention=R).schedule(layers)
    stages = [layer for layer, _ in schedule] + [layers]
    average = (stages[0] + sum((b - a) * q for (a, q), b in zip(schedule, stages[1:]))) / layers
    assert average == pytest.approx(R, abs=1e-9)
    shape = PRESETS[SparseVLMPress(retention=R).preset()]
    uncapped = [q for _, q in schedule if q < 1]
    assert uncapped == pytest.approx([w * uncapped[-1] / shape[-1] for w in shape][-len(uncapped):])


def test_shallow_models_scale_the_layers_and_respect_the_first_prunable_layer():
    press = SparseVLMPress(retention=0.25)
    assert [layer for layer, _ in press.schedule(4)] == [1, 2, 3]  # round((2, 6, 15) * 4 / 32) = (0, 1, 2), + 1
    assert press.min_retention(8, 4) == 0.25  # layer 0 sees every token: the floor on a 4-layer LLM
    assert [layer for layer, _ in press.schedule(3, first_layer=2)] == [2]  # after Qwen3-VL's DeepStack layers
    assert [layer for layer, _ in SparseVLMPress(layer_scale=True).schedule(28)] == [3, 6, 14]
    assert [layer for layer, _ in press.schedule(16)] == [3, 7, 15]  # layer 15's output reaches no layer: 14


@pytest.mark.parametrize("knobs", [dict(layers=()), dict(layers=(6, 2)), dict(layers=(-1,)), dict(budget="tokens"),
                                   dict(variant="v2"), dict(layer_scale="yes"), dict(recycle=1),
                                   dict(compute_dtype="fp16")])
def test_bad_knobs_are_refused(knobs):
    with pytest.raises(ValueError, match=next(iter(knobs))):
        SparseVLMPress(retention=0.5, **knobs)


# --- on the model: the rule's own definition --------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_kept_tokens_are_the_top_of_the_raters_attention_rows(deep_models, family):
    """At each pruning layer l, with the model's own `output_attentions` of layer l (over the sequence as cut by the
    earlier stages): the raters are the rule's, the kept frame tokens are the top-k of the raters' head- and
    rater-averaged rows, and the merged tokens are DPC-kNN merges of the best-scored pruned ones' layer-l outputs,
    placed after the visual span (the kept frame tokens, LLaVA-OV's newline), before the text."""
    model, processor = deep_models(family)
    inputs = make_inputs(processor, [tiny_video(8, seed=1), tiny_video(8, seed=2)], QUESTIONS)
    press = SparseVLMPress(retention=0.5, layers=(0, 1, 2), layer_scale=False)
    entering = {}

    def capture(layer):
        def hook(module, args, kwargs):
            entering[layer] = (args[0] if args else kwargs["hidden_states"]).clone()
        return hook

    with torch.no_grad(), press(model) as pressed:
        layers = model.model.language_model.layers
        handles = [layers[s].register_forward_pre_hook(capture(s), with_kwargs=True) for s in (1, 2, 3)]
        out = model(**inputs, output_attentions=True, output_hidden_states=True)
        for handle in handles:
            handle.remove()
    pruner, report = pressed.pruner, pressed.last_report
    assert [s for s, _ in pruner.stages] == [1, 2, 3]
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    B, L = ids.shape
    for b in range(B):
        placeholders = ((ids[b] == model.config.video_token_id) & mask[b]).nonzero().squeeze(1)
        frames = placeholders[: placeholders.numel() - report.extra_tokens[b]]  # LLaVA-OV: the newline is no frame
        text = torch.arange(L)[(torch.arange(L) > placeholders.max()) & mask[b]]
        E = out.hidden_states[0][b]
        relevance = torch.softmax(E[frames] @ E[text].T, dim=1).mean(0)
        raters = text[relevance > relevance.mean()]
        assert 0 < raters.numel() < text.numel()
        assert torch.equal(pruner.raters_full[b].nonzero().squeeze(1), raters)
        index, valid = torch.arange(L), mask[b]
        for stage, fraction in pruner.stages:
            attention = out.attentions[stage - 1][b].float()  # [H, Lc, Lc] over the current sequence
            is_frame = torch.isin(index, frames) & valid
            rows = (torch.isin(index, raters) & valid).nonzero().squeeze(1)
            cols = is_frame.nonzero().squeeze(1)
            score = attention[:, rows][:, :, cols].mean(0).mean(0)
            padded_index, new_valid = (t[b] for t in pruner.stage_state[stage])
            new_index = padded_index[new_valid]
            centres = pruner.recycled[stage][b]
            kept = new_index[torch.isin(new_index, frames) & ~torch.isin(new_index, centres)]
            budget = press.stage_budget(fraction, torch.tensor([frames.numel()]))
            k, clusters = press.split_budget(int(budget), cols.numel())
            assert kept.numel() == k and centres.numel() == clusters > 0
            order = torch.sort(score, descending=True, stable=True).indices
            assert set(index[cols[order[:k]]].tolist()) == set(kept.tolist())
            # merged tokens: the layer-l outputs of the best-scored pruned tokens, merged; right after the kept ones
            pool = cols[order[k:]][: recycled_count(cols.numel() - k)[0]]
            merged, which = press.merge(out.hidden_states[stage][b, pool], clusters)
            assert torch.equal(index[pool[which]], centres)
            cut = entering[stage][b][new_valid]
            first = int((new_index == centres[0]).nonzero())
            assert torch.equal(new_index[first : first + clusters], centres)
            before, after = new_index[:first], new_index[first + clusters :]
            assert set(before[torch.isin(before, frames)].tolist()) == set(kept.tolist())  # every kept frame token
            assert not torch.isin(after, placeholders).any()  # then the text
            assert torch.allclose(cut[first : first + clusters], merged)
            index, valid = padded_index, new_valid
    # the report: frame tokens each layer processed (merged tokens counted), and what survived per video
    assert report.layer_tokens[0] == sum(v.num_tokens for v in report.videos)
    final_index, final_valid = pruner.stage_state[3]
    survivors = [int(((pruner.owner[b][final_index[b]] >= 0) & final_valid[b]).sum()) for b in range(B)]
    assert [s.num_kept for s in report.selections] == survivors and report.layer_tokens[3] == sum(survivors)


@dataclasses.dataclass
class KeepAll(SparseVLMPress):
    """Runs the whole machinery (raters, scores, rebuilt sequences, masks, positions, cache) but keeps every token."""

    def schedule(self, num_layers, first_layer=1):
        return [(layer, 1.0) for layer, _ in super().schedule(num_layers, first_layer)]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", PRUNABLE)
def test_machinery_keeping_everything_is_exact(tiny_model, family, attn):
    model, processor = tiny_model(family, attn)
    inputs = make_inputs(processor, [tiny_video(8, seed=1), tiny_video(8, seed=2)], QUESTIONS)
    options = dict(max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        ref, ref_gen = model(**inputs).logits, model.generate(**inputs, **options)
        with KeepAll(retention=0.5)(model) as pressed:
            out, gen = model(**inputs).logits, model.generate(**inputs, **options)
    assert pressed.pruner is not None and pressed.last_report.retention == 1.0
    real = inputs["attention_mask"].bool()
    assert torch.allclose(out[real], ref[real], atol=1e-5, rtol=0)
    assert torch.equal(gen.sequences, ref_gen.sequences)


@pytest.mark.parametrize("family", PRUNABLE)
def test_batched_equals_per_sample(deep_models, family):
    model, processor = deep_models(family)
    videos = [tiny_video(8, seed=1), tiny_video(8, seed=2)]
    with torch.no_grad(), presses.get("sparsevlm", retention=0.5)(model) as pressed:
        batched = model(**make_inputs(processor, videos, QUESTIONS)).logits
        kept = [s.num_kept for s in pressed.last_report.selections]
        for i in range(2):
            single = model(**make_inputs(processor, videos[i : i + 1], QUESTIONS[i])).logits
            assert [s.num_kept for s in pressed.last_report.selections] == kept[i : i + 1]
            assert torch.allclose(single[0, -1], batched[i, -1], atol=1e-5, rtol=0)
    assert pressed.last_report.retention < 1


# --- with VidCom²'s frame budgets (SparseVLM+FCA) --------------------------------------------------------------------

def test_frame_budgets_keep_each_frames_share_ranked_by_the_raters(deep_models):
    """frame_budgets="vidcom2": at each stage, frame t processes min(its tokens so far, max(1, round(f M r[t] / R)))
    frame tokens (merged ones counted in their centre's frame); its kept tokens are the top of the raters' scores
    among its own, and its merged tokens are DPC-kNN merges of its own best-scored pruned tokens."""
    model, processor = deep_models("qwen2_5_vl")
    inputs = make_inputs(processor, [tiny_video(8, seed=1), tiny_video(12, seed=2)], QUESTIONS)
    R = 0.7
    press = SparseVLMPress(retention=R, layers=(0, 1, 2), layer_scale=False, frame_budgets="vidcom2")
    with torch.no_grad(), press(model) as pressed:
        out = model(**inputs, output_attentions=True, output_hidden_states=True)
    pruner, report = pressed.pruner, pressed.last_report
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    B, L = ids.shape
    recycled_somewhere = False
    for b in range(B):
        tokens = report.videos[b]
        M = tokens.tokens_per_frame
        r = VidCom2Press(retention=R).frame_retention(tokens).clamp(max=1)
        assert len(set(fca.frame_budgets(r, M).tolist())) > 1  # the frames' budgets really differ
        frames = ((ids[b] == model.config.video_token_id) & mask[b]).nonzero().squeeze(1)
        frame_of = torch.full((L,), -1)
        frame_of[frames] = torch.arange(frames.numel()) // M
        raters = pruner.raters_full[b]
        index, valid = torch.arange(L), mask[b]
        counts = torch.full((tokens.num_frames,), M)
        for stage, fraction in pruner.stages:
            quota = fca.stage_frame_budgets(r, R, fraction, M)
            attention = out.attentions[stage - 1][b].float()  # [H, Lc, Lc] over the current sequence
            rows = (raters[index] & valid).nonzero().squeeze(1)
            score = attention[:, rows].mean(0).mean(0)  # [Lc]
            padded_index, new_valid = (t[b] for t in pruner.stage_state[stage])
            new_index = padded_index[new_valid]
            centres = pruner.recycled[stage][b]
            merged_rows = out.hidden_states[stage][b]  # layer outputs over the current (padded) sequence
            entering = []
            for t in range(tokens.num_frames):
                places = ((frame_of[index] == t) & valid).nonzero().squeeze(1)  # frame t's current tokens
                assert places.numel() == counts[t]
                k, clusters = press.split_budget(int(quota[t]), places.numel())
                order = places[torch.sort(score[places], descending=True, stable=True).indices]
                mine = new_index[frame_of[new_index] == t]
                assert mine.numel() == min(int(counts[t]), int(quota[t])) == k + clusters
                own_centres = centres[frame_of[centres] == t]
                assert set(mine[~torch.isin(mine, own_centres)].tolist()) == set(index[order[:k]].tolist())
                if clusters:
                    pool = order[k:][: recycled_count(places.numel() - k)[0]]
                    merged, which = press.merge(merged_rows[pool], clusters)
                    assert torch.equal(index[pool[which]], own_centres)
                    entering.append(merged)
                    recycled_somewhere = True
                counts[t] = mine.numel()
            # the merged tokens follow the kept frame tokens, frame by frame, with the layer's merged states
            first = int((new_index == centres[0]).nonzero()) if centres.numel() else None
            if first is not None:
                assert torch.equal(new_index[first : first + centres.numel()], centres)
                assert torch.equal(frame_of[centres], frame_of[centres].sort().values)
            index, valid = padded_index, new_valid
        kept = report.selections[b].keep_indices
        assert torch.bincount(kept // M, minlength=tokens.num_frames).tolist() == counts.tolist()
    assert recycled_somewhere


@dataclasses.dataclass
class AtVidCom2Share(SparseVLMPress):
    """One stage keeping the share R of the video: with frame budgets, frame t's budget is VidCom²'s own k[t]."""

    def schedule(self, num_layers, first_layer=1):
        return [(1, self.retention)]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
@pytest.mark.parametrize("R", [0.3, 0.6])
def test_frame_budgets_at_vidcom2s_share_are_vidcom2s_budgets(tiny_model, family, R):
    model, processor = tiny_model(family, "sdpa")
    inputs = make_inputs(processor, [tiny_video(8, seed=3), tiny_video(8, seed=4)], QUESTIONS)
    press = AtVidCom2Share(retention=R, frame_budgets="vidcom2")
    with torch.no_grad(), press(model) as pressed:
        model(**inputs)
    report = pressed.last_report
    for tokens, selection in zip(report.videos, report.selections):
        expected = VidCom2Press(retention=R).select(tokens).frame_budgets
        M = tokens.tokens_per_frame
        assert torch.bincount(selection.keep_indices // M, minlength=tokens.num_frames).tolist() == expected.tolist()
    assert any(centres.numel() for centres in pressed.pruner.recycled[1])  # merged tokens made and counted


@dataclasses.dataclass
class KeepAllFrames(SparseVLMPress):
    """The per-frame machinery (raters, scores, one pool per frame, rebuilt sequences) with every frame kept whole."""

    def stage_frame_budget(self, fraction, frame_retention, tokens_per_frame):
        return torch.as_tensor(tokens_per_frame).expand_as(frame_retention).clone()


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_frame_budgets_machinery_keeping_everything_is_exact(tiny_model, family):
    model, processor = tiny_model(family, "sdpa")
    inputs = make_inputs(processor, [tiny_video(8, seed=1), tiny_video(8, seed=2)], QUESTIONS)
    options = dict(max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        ref, ref_gen = model(**inputs).logits, model.generate(**inputs, **options)
        with KeepAllFrames(retention=0.5, frame_budgets="vidcom2")(model) as pressed:
            out, gen = model(**inputs).logits, model.generate(**inputs, **options)
    assert pressed.pruner.per_frame and pressed.last_report.retention == 1.0
    real = inputs["attention_mask"].bool()
    assert torch.allclose(out[real], ref[real], atol=1e-5, rtol=0)
    assert torch.equal(gen.sequences, ref_gen.sequences)
