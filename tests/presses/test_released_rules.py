"""The rules of the authors' released code (stated in each press's docstring), on hand-built cases whose answer is
known by construction: PDrop's own-layer ranking and int() counts, VisionZip's strided targets and target + mean,
FastVID's salient split / anchors / density peaks / merge weights, DyCoke's drops and edges, MARC's question-only
query, and the compute_dtype knob."""

import math

import pytest
import torch

from vidpress import VideoTokens, presses
from vidpress.models import get_adapter
from vidpress.models.base import PressReport
from vidpress.models.layer_pruning import LayerPruner
from vidpress.presses import (
    DivPrunePress,
    DyCokePress,
    FastVIDPress,
    MarcPress,
    PDropPress,
    VidCom2Press,
    VisionZipPress,
)
from vidpress.presses.fastvid import density_peaks
from vidpress.testing import make_inputs, tiny_model_and_processor, tiny_video
from vidpress.types import Query, Selection

# --- PDrop ------------------------------------------------------------------------------------------------------

def _top_video_tokens(attention_row, video_positions, count):
    """Token indices (into the video) of the `count` video tokens with the highest head-averaged attention."""
    scores = attention_row.mean(dim=0)[video_positions]  # [V]
    return sorted(torch.sort(scores, descending=True, stable=True).indices[:count].tolist())


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_pdrop_ranks_a_stage_with_its_own_layer(tiny_model, family):
    # One stage at layer 1 of the 2-layer tiny LLM. Nothing is dropped before it, so the hidden states entering
    # layer 1 are the unpressed model's, and layer 1's own attention row is output_attentions[1] of the full model.
    model, processor = tiny_model(family, "eager")
    inputs = make_inputs(processor, [tiny_video(8, seed=3)], "Which square moves fastest?")
    video_positions = (inputs["input_ids"][0] == get_adapter(model).video_token_id).nonzero().squeeze(1)
    V = video_positions.numel()
    with torch.no_grad():
        attentions = model(**inputs, output_attentions=True).attentions
        kept = {}
        for scoring in ("stage_layer", "previous_layer"):
            press = PDropPress(retention=0.6, stage_depths=(0.5,), scoring=scoring)  # lambda = 0.2
            with press(model) as pressed:
                model(**inputs)
            kept[scoring] = pressed.last_report.selections[0].keep_indices.tolist()
    count = int(0.2 * V)  # int(), as released
    assert kept["stage_layer"] == _top_video_tokens(attentions[1][0, :, -1], video_positions, count)
    assert kept["previous_layer"] == _top_video_tokens(attentions[0][0, :, -1], video_positions, count)
    assert kept["stage_layer"] != kept["previous_layer"]  # the two rules differ on this model


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_pdrop_stages_after_a_cut_batched_equals_per_sample(family):
    # 4 layers, stages before layers 1, 2, 3: the later stages score the sequence as cut (and re-padded) before
    model, processor = tiny_model_and_processor(family, text_config={"num_hidden_layers": 4})
    model.eval()
    videos = [tiny_video(8, seed=1), tiny_video(8, seed=2)]
    questions = ["What happens?", "Which colour is the square that moves fastest in the video?"]
    with torch.no_grad(), PDropPress(retention=0.5)(model) as pressed:
        singles = [model(**make_inputs(processor, [v], q)).logits[0, -1] for v, q in zip(videos, questions)]
        pressed.last_report.selections[0].keep_indices  # the report holds a selection after the single runs
        batched = model(**make_inputs(processor, videos, questions)).logits[:, -1]
        layer_tokens = pressed.last_report.layer_tokens
    assert len(set(layer_tokens)) == 4  # every stage cut
    for i, single in enumerate(singles):
        assert torch.allclose(single, batched[i], atol=1e-5, rtol=0)


def test_pdrop_counts_use_int_and_a_round_lambda_stays_exact():
    press = PDropPress(retention=(1 + 0.5 + 0.25 + 0.125) / 4)
    assert [share for _, share in press.schedule(28)] == [0.5, 0.25, 0.125]  # exactly, not 0.4999...
    tokens = torch.tensor([99, 100, 7])
    assert press.stage_budget(0.5, tokens).tolist() == [49, 50, 3]  # int(): 49.5 -> 49, 3.5 -> 3
    assert press.stage_budget(0.001, tokens).tolist() == [1, 1, 1]  # at least one
    with pytest.raises(ValueError, match="scoring"):
        PDropPress(scoring="last_layer")


# --- VisionZip --------------------------------------------------------------------------------------------------

def test_visionzip_strided_targets_and_target_plus_mean():
    # one frame of 8 tokens, no dominant tokens, 3 contextual: n = 8, c = 3, targets arange(0, 8, 8 // 3)[:3] = 0, 2, 4
    # (an even spread floor(i * 8 / 3) would give 0, 2, 5)
    T, M = 1, 8
    features = torch.arange(M * 2, dtype=torch.float32).view(T, M, 2)
    keys = torch.zeros(T, M, 3)
    keys[0, :, 0] = 1.0  # every token's key points the same way: all join the first target (ties to the earlier)
    keys[0, 4] = torch.tensor([0.0, 1.0, 0.0])
    keys[0, 5] = torch.tensor([0.1, 1.0, 0.0])  # 5 is closest to target 4
    side = {"vision_attention": torch.zeros(T, M), "vision_keys": keys}
    tokens = VideoTokens(features, (T, 2, 4), side_features=side)
    sel = VisionZipPress(retention=3 / 8, dominant_ratio=0.0).select(tokens)
    assert sel.keep_indices.tolist() == [0, 2, 4]
    x = features[0]
    expected = torch.stack([x[0] + (x[1] + x[3] + x[6] + x[7]) / 4, x[2], x[4] + x[5]])
    assert torch.allclose(sel.features, expected)
    mean = VisionZipPress(retention=3 / 8, dominant_ratio=0.0, contextual_merge="mean").select(tokens)
    assert torch.allclose(mean.features, torch.stack([(x[0] + x[1] + x[3] + x[6] + x[7]) / 5, x[2], (x[4] + x[5]) / 2]))
    with pytest.raises(ValueError, match="contextual_merge"):
        VisionZipPress(contextual_merge="sum")


# --- FastVID ----------------------------------------------------------------------------------------------------

def one_segment(**knobs):
    return FastVIDPress(min_segments=1, threshold=-1.0, **knobs)


def test_fastvid_salient_share_and_anchor_frames_from_the_segment_end():
    # 6 frames x 10 tokens, per-frame budget int(0.5 * 10) = 5: 5 - int(5 * 0.4) = 3 salient per frame, and the
    # context budget 6 * 2 = 12 goes to the anchor frames 5 and 1 (every 4th counted back from the last), 6 each
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 10, 8, generator=g)
    sel = one_segment(retention=0.5, budget="per_frame", saliency="norm").select(VideoTokens(x, (6, 2, 5)))
    assert sel.frame_budgets.tolist() == [3, 3 + 6, 3, 3, 3, 3 + 6]
    norms = x.norm(dim=-1)
    for t in (0, 2, 3, 4):  # non-anchor frames keep exactly their 3 largest-norm tokens
        kept = (sel.keep_indices[sel.keep_indices // 10 == t] % 10).tolist()
        assert kept == sorted(norms[t].topk(3).indices.tolist())
    # the exact budget keeps round(R * T * M) in total, with the same 60 / 40 split per frame
    exact = one_segment(retention=0.5, saliency="norm").select(VideoTokens(x, (6, 2, 5)))
    assert exact.num_kept == 30 and torch.equal(exact.keep_indices, sel.keep_indices)
    assert one_segment(retention=0.25, budget="per_frame").select(
        VideoTokens(x, (6, 2, 5))).num_kept == 6 * 2  # int(2.5)


def scenes(lengths, M, D=16, seed=0):
    """Frames [sum(lengths), M, D]: one random scene per segment, each frame its scene plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randn(1, M, D, generator=g) + 0.01 * torch.randn(L, M, D, generator=g) for L in lengths]
    return torch.cat(parts)


def released_per_frame_count(lengths, M, R, d=0.4, p=4):
    """The released per-frame count: b = int(R M) per frame, b - int(b d) salient, and per segment of L frames each
    of its ceil(L / p) anchor frames gets (L * int(b d)) // ceil(L / p) context tokens."""
    b = int(M * R)
    c = int(b * d)
    return sum(L * (b - c) + -(-L // p) * (L * c // -(-L // p)) for L in lengths)


@pytest.mark.parametrize(("lengths", "M", "R", "expected"), [
    # the five shapes where vidpress kept T * int(R M) before: T=32, M=49, R=0.25 kept 384 (11 frames, 3 anchors:
    # 44 // 3 = 14 each, 2 dropped) ...
    ((11, 21), 49, 0.25, 382),
    ((16, 5, 3), 49, 0.1, 95),  # 96 before (5 frames, 2 anchors: 5 // 2 = 2 each)
    ((5, 7, 20), 36, 0.1, 94),  # 96 before
    ((10, 14), 49, 0.25, 287),  # 288 before (40 // 3 = 13 each)
    ((5, 7, 20), 49, 0.5, 766),  # 768 before (b = 24, 9 context per frame: 45 // 2 = 22 each, 63 // 2 = 31 each)
])
def test_fastvid_per_frame_context_count_is_floored_per_anchor_frame(lengths, M, R, expected):
    x = scenes(lengths, M)
    press = FastVIDPress(retention=R, min_segments=len(lengths), threshold=-1.0, budget="per_frame")
    bounds = [sum(lengths[:i]) for i in range(len(lengths) + 1)]
    assert press.segments(VideoTokens(x, (x.shape[0], 1, M))) == list(zip(bounds[:-1], bounds[1:]))
    assert released_per_frame_count(lengths, M, R) == expected
    assert press.select(VideoTokens(x, (x.shape[0], 1, M))).num_kept == expected


def _density_peaks_literal(x, count, knn):
    """DPC-kNN read literally: full distance matrix / sqrt(D), k nearest including itself, one row at a time."""
    C, D = x.shape
    dist = torch.cdist(x.double(), x.double()) / math.sqrt(D)
    rho = []
    for i in range(C):
        nearest = sorted(dist[i].tolist())[:knn]  # the row itself (distance 0) is among them
        rho.append(math.exp(-sum(d * d for d in nearest) / knn))
    delta = []
    for i in range(C):
        higher = [j for j in range(C) if rho[j] > rho[i] or (rho[j] == rho[i] and j < i)]
        delta.append(min(dist[i, j].item() for j in higher) if higher else dist.max().item())
    score = [r * d for r, d in zip(rho, delta)]
    return sorted(sorted(range(C), key=lambda i: (-score[i], i))[:count])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fastvid_density_peaks_match_the_literal_rule(seed):
    x = torch.randn(12, 6, generator=torch.Generator().manual_seed(seed)) * 3
    assert density_peaks(x, 4, knn=4).tolist() == _density_peaks_literal(x, 4, 4)


def test_fastvid_merge_weights_by_hand():
    # one frame (its own anchor), 6 tokens, budget 3 (per frame): 3 - int(1.2) = 2 salient (largest norms: 0, 1),
    # 1 context token among 2..5, into which the other 3 merge with w = clamp(1 / 4, min=0.6) = 0.6
    x = torch.tensor([[[9.0, 0.0], [0.0, 9.0], [1.0, 1.0], [1.1, 1.0], [1.0, 1.2], [1.2, 1.1]]])
    sel = one_segment(retention=0.5, budget="per_frame", saliency="norm").select(VideoTokens(x, (1, 2, 3)))
    f = x[0]
    peak = density_peaks(f[2:], 1, knn=4).item() + 2
    assert sel.keep_indices.tolist() == [0, 1, peak]
    others = [i for i in (2, 3, 4, 5) if i != peak]
    w = 0.6
    merged = (f[peak] + w * f[others].sum(0)) / (1 + 3 * w)
    assert torch.allclose(sel.features, torch.stack([f[0], f[1], merged]), atol=1e-6)  # salient tokens untouched


def test_fastvid_every_anchor_frame_takes_the_segment_tokens():
    # two identical frames, every frame an anchor (p = 1), b = int(0.75 * 4) = 3: 2 salient (norms: tokens 0, 3) and
    # 1 context token per frame among tokens 1, 2 (the same position q on both). Each context token absorbs the
    # segment's other non-salient, non-context tokens: the other position of BOTH frames (n = 2, w = 0.6).
    f = torch.tensor([[9.0, 0.0], [1.0, 1.0], [1.1, 1.0], [1.2, 1.1]])
    x = f.repeat(2, 1, 1)
    sel = one_segment(retention=0.75, budget="per_frame", saliency="norm", anchor_interval=1).select(
        VideoTokens(x, (2, 2, 2)))
    assert sel.frame_budgets.tolist() == [3, 3]
    q = sel.keep_indices[1].item()
    assert q in (1, 2) and sel.keep_indices.tolist() == [0, q, 3, 4, q + 4, 7]
    other = 3 - q
    merged = (f[q] + 0.6 * 2 * f[other]) / (1 + 2 * 0.6)
    assert torch.allclose(sel.features[1], merged, atol=1e-6) and torch.allclose(sel.features[4], merged, atol=1e-6)
    assert torch.equal(sel.features[[0, 2, 3, 5]], x.reshape(8, 2)[[0, 3, 4, 7]])  # salient tokens untouched


def test_fastvid_bad_knobs():
    for knobs, name in (({"budget": "total"}, "budget"), ({"context_ratio": 2.0}, "context_ratio"),
                        ({"compute_dtype": "bf16"}, "compute_dtype")):
        with pytest.raises(ValueError, match=name):
            FastVIDPress(**knobs)


# --- DyCoke -----------------------------------------------------------------------------------------------------

def test_dycoke_drops_by_default_and_released_edges():
    g = torch.Generator().manual_seed(0)
    tokens = VideoTokens(torch.randn(8, 16, 8, generator=g), (8, 4, 4))
    sel = DyCokePress(retention=0.5).select(tokens)
    assert sel.features is None  # released: dropped, not averaged
    assert sel.frame_budgets.tolist() == [16, 5, 5, 6, 16, 5, 5, 6]
    # released edges, T % 4 == 0: frame T - 2 = 6 stays whole; the 64 - 48 = 16 others spread over 1, 2, 3, 5, 7
    released = DyCokePress(retention=0.5, edges="released").select(tokens)
    assert released.frame_budgets.tolist() == [16, 3, 3, 3, 16, 3, 16, 4]
    assert released.num_kept == 64 and DyCokePress(edges="released").min_retention(8) == 3 / 8
    # odd T: the last frame is never paired and is dropped whole
    odd = VideoTokens(torch.randn(7, 16, 8, generator=g), (7, 4, 4))
    sel = DyCokePress(retention=0.5, edges="released").select(odd)
    assert (sel.frame_budgets[-1] == 0 and sel.frame_budgets[[0, 4]].tolist() == [16, 16]
            and sel.num_kept == round(0.5 * 112))
    with pytest.raises(ValueError, match="merge=False"):
        DyCokePress(edges="released", merge=True)
    with pytest.raises(ValueError, match="edges"):
        DyCokePress(edges="tail")


# --- MARC ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "llava_onevision"])
def test_query_mask_holds_the_question_only(tiny_model, family):
    model, processor = tiny_model(family)
    inputs = make_inputs(processor, [tiny_video(4)], "Which square moves fastest?")
    query = get_adapter(model).query(inputs["input_ids"][0], inputs["attention_mask"][0].bool())
    question = processor.tokenizer.decode(query.token_ids[query.question_mask])
    assert question.strip() == "Which square moves fastest?"
    assert query.question_mask.sum() < query.token_ids.numel()  # the template's tokens are left out


def test_marc_retrieves_with_the_question_tokens_only():
    # 3 clips with orthogonal directions; the question tokens point at clip 2, the template tokens (3 times as many)
    # at clip 0: with the mask the press retrieves clip 2, without it clip 0
    D, M = 16, 4
    directions = torch.eye(D)[:3]
    x = torch.cat([directions[c].expand(4, M, D) for c in range(3)])  # 12 frames, 3 scenes
    tokens = VideoTokens(x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)), (12, 2, 2))
    embeddings = torch.stack([directions[0]] * 6 + [directions[2]] * 2)
    mask = torch.tensor([False] * 6 + [True] * 2)
    press = MarcPress(budget_tokens=M, top_k=1)
    with_mask = press.retrieve(tokens, Query(torch.arange(8), embeddings, question_mask=mask))
    without = press.retrieve(tokens, Query(torch.arange(8), embeddings))
    assert with_mask == [(8, 12)] and without == [(0, 4)]


# --- compute_dtype ------------------------------------------------------------------------------------------------

PRESSES_WITH_DTYPE = ["vidcom2", "divprune", "dycoke", "fastvid", "visionzip", "marc", "fastv", "pdrop", "flashvid",
                      "holitom"]


@pytest.mark.parametrize("name", PRESSES_WITH_DTYPE)
def test_compute_dtype_is_validated(name):
    assert presses.get(name, compute_dtype="model").compute_dtype == "model"
    with pytest.raises(ValueError, match="compute_dtype"):
        presses.get(name, compute_dtype="bfloat16")


@pytest.mark.parametrize("cls", [VidCom2Press, DivPrunePress])
def test_compute_dtype_model_computes_in_the_features_dtype(cls):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 64, 32, generator=g)
    half = x.bfloat16()
    # float32 (default): a bf16 video keeps exactly what its float32 copy keeps
    default = cls(retention=0.25).select(VideoTokens(half, (8, 8, 8)))
    assert torch.equal(default.keep_indices,
                       cls(retention=0.25).select(VideoTokens(half.float(), (8, 8, 8))).keep_indices)
    # "model" equals float32 on float32 features, and computes in bf16 on bf16 features (different near-ties)
    assert torch.equal(
        cls(retention=0.25, compute_dtype="model").select(VideoTokens(half.float(), (8, 8, 8))).keep_indices,
        default.keep_indices)
    model = cls(retention=0.25, compute_dtype="model").select(VideoTokens(half, (8, 8, 8)))
    assert abs(model.num_kept - default.num_kept) <= 8 and not torch.equal(model.keep_indices, default.keep_indices)


@pytest.mark.parametrize("compute_dtype", ["float32", "model"])
def test_compute_dtype_of_the_llm_ranking(tiny_model, compute_dtype):
    model, _ = tiny_model("qwen2_5_vl")
    adapter = get_adapter(model)
    pruner = LayerPruner(PDropPress(retention=0.6, stage_depths=(0.5,), compute_dtype=compute_dtype), adapter)
    ids = torch.tensor([[1] * 3 + [adapter.video_token_id] * 10 + [1] * 3])
    pruner.begin(ids, None, PressReport(selections=[Selection(torch.arange(10), 10)], extra_tokens=[0]))
    g = torch.Generator().manual_seed(0)
    query, key = torch.randn(1, 4, 16, 8, generator=g).bfloat16(), torch.randn(1, 2, 16, 8, generator=g).bfloat16()
    pruner.record(query, key, scaling=8 ** -0.5)
    q = query[0, :, -1].view(2, 2, 8)  # [kv heads, group, d]
    dtype = torch.float32 if compute_dtype == "float32" else torch.bfloat16
    logits = torch.einsum("kgd,knd->kgn", q.to(dtype), key[0].to(dtype)) * 8 ** -0.5
    expected = torch.softmax(logits, dim=-1).mean(dim=(0, 1)).float()
    assert torch.equal(pruner.scores[0], expected)
