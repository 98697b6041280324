"""VidCom²'s frame budgets on other presses (FCA, `frame_budgets="vidcom2"`): every press that declares
`supports_frame_budgets` keeps VidCom²'s per-frame counts with its own ranking inside each frame; the others refuse.
Hosts are read from the registry and the declared flag."""

import math

import pytest
import torch

from vidpress import presses
from vidpress.models import get_adapter
from vidpress.presses import PRESSES, VidCom2Press, fca
from vidpress.testing import make_inputs, tiny_model_and_processor, tiny_video
from vidpress.types import VideoTokens

HOSTS = [n for n in presses.available() if PRESSES[n].supports_frame_budgets]
BEFORE_LLM = [n for n in HOSTS if not PRESSES[n].acts_in_llm]
IN_LLM = [n for n in HOSTS if PRESSES[n].acts_in_llm]
#: the in-LLM hosts ranking by the last prompt token's attention; the query-aware ones (SparseVLM: its raters' rows,
#: plus recycling) are checked against their own rule in their own test file
LAST_TOKEN = [n for n in IN_LLM if not PRESSES[n].query_aware]
REFUSING = [n for n in presses.available() if not PRESSES[n].supports_frame_budgets]


def video(T: int, M: int = 16, D: int = 32, seed: int = 0) -> VideoTokens:
    """Random tokens with a few frames made distinct (so the budgets differ), plus VisionZip's vision statistics."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, M, D, generator=g) * 0.1 + torch.randn(D, generator=g)
    x[:: max(1, T // 3)] += torch.randn(len(range(0, T, max(1, T // 3))), M, D, generator=g)
    side = math.isqrt(M)
    tokens = VideoTokens(x, (T, side, M // side))
    tokens.side_features = {"vision_attention": torch.rand(T, M, generator=g),
                            "vision_keys": torch.randn(T, M, 4, generator=g)}
    return tokens


def test_the_hosts_and_the_refusals_are_declared():
    assert {"fastv", "pdrop", "divprune", "visionzip", "random"} <= set(HOSTS)
    assert {"vidcom2", "uniform", "dycoke", "fastvid", "marc", "cacovid"} <= set(REFUSING)


@pytest.mark.parametrize("name", REFUSING)
def test_a_press_without_the_flag_refuses_with_its_reason(name):
    cls = PRESSES[name]
    with pytest.raises(ValueError, match=rf"{cls.__name__} \({name}\) does not take frame_budgets='vidcom2': "
                                         rf"{cls.no_frame_budgets_because[:20]}"):
        presses.get(name, frame_budgets="vidcom2")


@pytest.mark.parametrize("name", HOSTS)
def test_unknown_frame_budgets_are_a_clear_error(name):
    with pytest.raises(ValueError, match="frame_budgets must be None .* 'vidcom2'; got 'uniform'"):
        presses.get(name, frame_budgets="uniform")


@pytest.mark.parametrize("R", [0.1, 0.25, 0.6])
@pytest.mark.parametrize("T", [1, 5, 12])
@pytest.mark.parametrize("name", BEFORE_LLM)
def test_per_frame_counts_are_vidcom2s_budgets(name, T, R):
    tokens = video(T, seed=T)
    expected = VidCom2Press(retention=R).select(tokens).frame_budgets
    selection = presses.get(name, retention=R, frame_budgets="vidcom2").select(tokens)
    M = tokens.tokens_per_frame
    assert torch.bincount(selection.keep_indices // M, minlength=T).tolist() == expected.tolist()
    assert selection.frame_budgets.tolist() == expected.tolist()
    if T > 1:
        assert len(set(expected.tolist())) > 1  # the budgets really differ between frames here


def test_the_budgets_are_vidcom2s_own_code():
    tokens = video(6)
    press = VidCom2Press(retention=0.3)
    r = press.frame_retention(tokens).clamp(max=1)
    assert torch.equal(fca.vidcom2_frame_retention(tokens.features, 0.3), r)
    assert torch.equal(presses.get("random", retention=0.3, frame_budgets="vidcom2").frame_retention_fca(tokens), r)
    assert torch.equal(press.select(tokens).frame_budgets, fca.frame_budgets(r, 16))


@pytest.mark.parametrize("name", BEFORE_LLM)
def test_retention_one_keeps_everything(name):
    tokens = video(5)
    selection = presses.get(name, retention=1.0, frame_budgets="vidcom2").select(tokens)
    assert torch.equal(selection.keep_indices, torch.arange(tokens.num_tokens)) and selection.features is None


def test_score_presses_keep_their_own_top_tokens_in_each_frame():
    tokens = video(7)
    for name in BEFORE_LLM:
        press = presses.get(name, retention=0.25, frame_budgets="vidcom2")
        if not isinstance(press, presses.ScorePress):
            continue
        scores, _ = press.rank(tokens, None)
        keep = press.select(tokens).keep_indices.view(-1, 1)
        M = tokens.tokens_per_frame
        for t, k in enumerate(VidCom2Press(retention=0.25).select(tokens).frame_budgets.tolist()):
            top = torch.sort(scores[t], descending=True, stable=True).indices[:k].sort().values
            assert torch.equal(keep[(keep // M == t)].flatten() - t * M, top)


@pytest.mark.parametrize("name", ["divprune", "visionzip"])
def test_whole_video_presses_run_their_own_rule_inside_each_frame(name):
    # DivPrune's greedy max-min and VisionZip's dominant + contextual split, on frame t alone at its budget k[t],
    # keep the same tokens (and merged features) as the composed press keeps in frame t.
    tokens = video(6, seed=4)
    M = tokens.tokens_per_frame
    composed = presses.get(name, retention=0.25, frame_budgets="vidcom2").select(tokens)
    budgets = VidCom2Press(retention=0.25).select(tokens).frame_budgets.tolist()
    for t, k in enumerate(budgets):
        frame = VideoTokens(tokens.features[t : t + 1], (1, 4, 4))
        frame.side_features = {key: value[t : t + 1] for key, value in tokens.side_features.items()}
        alone = presses.get(name, retention=k / M).select(frame)
        mine = (composed.keep_indices // M) == t
        assert torch.equal(composed.keep_indices[mine] - t * M, alone.keep_indices)
        if composed.features is not None:
            assert torch.allclose(composed.features[mine], alone.features, atol=1e-6)


# --- inside the LLM ----------------------------------------------------------------------------------------------

def _frame_top(attention_row, video_positions, M, quotas):
    """Per frame, the video tokens with the highest head-averaged attention, `quotas[t]` of them; sorted indices."""
    scores = attention_row.mean(dim=0)[video_positions].view(-1, M)
    keep = [torch.sort(s, descending=True, stable=True).indices[:q] + t * M
            for t, (s, q) in enumerate(zip(scores, quotas.tolist()))]
    return torch.cat(keep).sort().values.tolist()


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
@pytest.mark.parametrize("name", LAST_TOKEN)
def test_in_llm_stages_keep_vidcom2s_share_of_each_frame_by_their_own_ranking(tiny_model, family, name):
    # One stage at layer 1 of the 2-layer tiny LLM, ranked by layer 0's (FastV) or layer 1's own (PDrop) attention
    # of the last token: output_attentions of the unpressed model, since nothing is cut before the stage.
    model, processor = tiny_model(family, "eager")
    inputs = make_inputs(processor, [tiny_video(8, seed=3)], "Which square moves fastest?")
    video_positions = (inputs["input_ids"][0] == get_adapter(model).video_token_id).nonzero().squeeze(1)
    knobs = {"layer": 1} if name == "fastv" else {"stage_depths": (0.5,)} if name == "pdrop" else {}
    press = presses.get(name, retention=0.8, frame_budgets="vidcom2", **knobs)
    with torch.no_grad():
        attentions = model(**inputs, output_attentions=True).attentions
        with press(model) as pressed:
            model(**inputs)
    report = pressed.last_report
    tokens = report.videos[0]
    M = tokens.tokens_per_frame
    (layer, fraction), = press.schedule(2)
    r = VidCom2Press(retention=0.8).frame_retention(tokens).clamp(max=1)
    quotas = torch.round(fraction * M * r.double() / 0.8).long().clamp(1, M)  # V3: max(1, round(f M r[t] / R))
    assert len(set(quotas.tolist())) > 1
    kept = report.selections[0].keep_indices
    assert torch.bincount(kept // M, minlength=tokens.num_frames).tolist() == quotas.tolist()
    row = attentions[layer if press.scoring == "stage_layer" else layer - 1][0, :, -1]
    frame_positions = video_positions[: tokens.num_tokens]  # LLaVA-OneVision: then one always-kept newline token
    assert kept.tolist() == _frame_top(row, frame_positions, M, quotas)
    assert report.layer_tokens == [tokens.num_tokens, int(quotas.sum())]


@pytest.mark.parametrize("name", IN_LLM)
def test_in_llm_batched_equals_per_sample(name):
    # 4 layers; PDrop cuts before layers 1, 2, 3 (per frame: the minimum over the stages so far), FastV once.
    model, processor = tiny_model_and_processor("qwen2_5_vl", text_config={"num_hidden_layers": 4})
    model.eval()
    videos = [tiny_video(8, seed=1), tiny_video(12, seed=2)]
    questions = ["What happens?", "Which colour is the square that moves fastest in the video?"]
    press = presses.get(name, retention=0.6, frame_budgets="vidcom2")
    with torch.no_grad(), press(model) as pressed:
        singles, kept = [], []
        for v, q in zip(videos, questions):
            singles.append(model(**make_inputs(processor, [v], q)).logits[0, -1])
            kept.append(pressed.last_report.selections[0].keep_indices)
        batched = model(**make_inputs(processor, videos, questions)).logits[:, -1]
        report = pressed.last_report
    for i, single in enumerate(singles):
        assert torch.equal(report.selections[i].keep_indices, kept[i])
        assert torch.allclose(single, batched[i], atol=1e-5, rtol=0)
        tokens = report.videos[i]
        last = press.schedule(4)[-1][1]
        quotas = press.stage_frame_budget(last, press.frame_retention_fca(tokens), tokens.tokens_per_frame)
        assert torch.bincount(kept[i] // tokens.tokens_per_frame, minlength=tokens.num_frames).tolist() == \
            quotas.tolist()


def test_stage_frame_budgets_rule():
    r = torch.tensor([0.1, 0.25, 0.4, 1.0])
    # f = R: VidCom²'s own k[t] = max(1, round(r[t] * M)); a stage keeping half of that, half per frame; at most M
    assert fca.stage_frame_budgets(r, 0.25, 0.25, 16).tolist() == [2, 4, 6, 16]
    assert fca.stage_frame_budgets(r, 0.25, 0.125, 16).tolist() == [1, 2, 3, 8]
    assert fca.stage_frame_budgets(r, 0.25, 0.01, 16).tolist() == [1, 1, 1, 1]
    assert fca.frame_budgets(torch.tensor([0.01, 0.53, 1.7]), 16).tolist() == [1, 8, 16]
