"""The press contract, checked for every registered press (`vidpress.presses.PRESSES`).

A press declares what it needs only through the attributes of `Press` (and `LayerPress`), round-trips by name, keeps
everything at retention 1, returns a valid Selection, keeps the budget its docstring promises, honours its
`min_retention` floor, gets `post_init_from_model` on entry and leaves the model exactly as it found it. Selections
are checked on random tokens [T, M, 128]; the rest on the shipped reference model (Qwen2.5-VL, 4 LLM layers, videos
of 8 x 16 tokens) and, at retention 1, on the tiny model of every family. CaCoVID runs the shipped policy. Every press
that declares `supports_frame_budgets` is checked a second time as "<name>+fca" (frame_budgets="vidcom2").
"""

import dataclasses
import math
from pathlib import Path

import pytest
import torch

import vidpress.synthetic
from vidpress import presses
from vidpress.models import get_adapter
from vidpress.presses import CaCoVIDPolicy, LayerPress, Press
from vidpress.testing import FAMILIES, make_inputs, tiny_video
from vidpress.types import Query, VideoTokens

NAMES = presses.available()
FCA = "+fca"
#: every press, plus "<name>+fca" (VidCom²'s frame budgets) for each press that declares it takes them
VARIANTS = NAMES + [name + FCA for name in NAMES if presses.PRESSES[name].supports_frame_budgets]
CACOVID_POLICY = Path(vidpress.synthetic.__file__).parent / "cacovid_reference"
WIDTH = 128  # the reference model's LLM width, which the shipped CaCoVID policy was trained for
GENERATE = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)

#: The attributes through which a press declares what it needs (`Press`, `LayerPress`); every other public class
#: attribute of a press must be a knob (a dataclass field).
CONTRACT = {"name", "query_aware", "acts_in_llm", "prunes_before_llm", "needs_vision_stats", "vision_layer",
            "needs_policy", "count_follows_content", "scoring", "compute_dtype", "supports_frame_budgets",
            "no_frame_budgets_because"}

#: How far the effective retention may be from the target max(R, min_retention) on T frames of M tokens, as the
#: press's docstring promises. Presses not listed keep exactly round(target * T * M) tokens.
GRANULARITY = {
    "uniform": lambda T, M: 0.5 / T,  # whole frames: round(R * T) of them
    "marc": lambda T, M: 1 / T,  # whole merged frames, K // M of them (fewer when retrieval keeps fewer)
    "vidcom2": lambda T, M: 1 / M,  # per-frame budgets round(r_t * M) averaging R, clamped to [1, M]
    "evs": lambda T, M: 1 / (T * M),  # vLLM's count int(N * R), not round(N * R)
    # a pooled h' x w' grid per frame, each axis within one cell of sqrt(R) * side: (s + 1/side)^2 - s^2 at most
    "downsample": lambda T, M: 2 / math.isqrt(M) + 1 / M,
    "cacovid": lambda T, M: 1 / (T * M),  # floor(R * T * M) as released
    **{name: lambda T, M: 1 / M for name in VARIANTS if name.endswith(FCA)},  # VidCom²'s budgets, as vidcom2
    # vision side: ceil(M * R * e) per frame plus the DPC-kNN ceilings; in the LLM ceil(r * L_v), layer-averaged
    "flashvid": lambda T, M: 2 / M,
    "holitom": lambda T, M: 1.5 / M,  # ceil(n_dyn * R') per frame, round(n_S * R') per window
}
#: Presses that may keep less than the target on a video, by their rule: only the upper bound is checked there.
AT_MOST = {
    "holitom": "static windows are merged at any R, so a video whose static share exceeds 1 - R keeps less",
}


def build(name: str, retention: float, policy) -> Press:
    """The press (or "<name>+fca" variant) at `retention`; CaCoVID with the shipped policy (a folder: loaded on
    entry)."""
    knobs = {"policy": policy} if name == "cacovid" else {}
    if name.endswith(FCA):
        name, knobs = name.removesuffix(FCA), {"frame_budgets": "vidcom2"}
    return presses.get(name, retention=retention, **knobs)


def video(T: int, M: int = 16, seed: int = 0) -> tuple[VideoTokens, Query]:
    """Random tokens [T, M, WIDTH] with the vision statistics the presses read, and a question of 6 tokens."""
    g = torch.Generator().manual_seed(seed)
    side = math.isqrt(M)
    tokens = VideoTokens(torch.randn(T, M, WIDTH, generator=g), (T, side, M // side))
    tokens.side_features = {"vision_attention": torch.rand(T, M, generator=g),
                            "vision_keys": torch.randn(T, M, 4, generator=g)}
    tokens.side_features["vision_received"] = torch.rand(T, M, generator=g)
    return tokens, Query(torch.arange(6), torch.randn(6, WIDTH, generator=g))


def check_valid(selection, num_tokens: int) -> None:
    keep = selection.keep_indices
    assert keep.dtype == torch.long and selection.num_tokens == num_tokens
    assert torch.equal(keep, torch.unique(keep))  # sorted, no duplicates
    assert 0 <= int(keep[0]) and int(keep[-1]) < num_tokens


@pytest.fixture(scope="module")
def policy():
    return CaCoVIDPolicy.from_pretrained(CACOVID_POLICY)


@pytest.fixture(scope="module")
def reference():
    """(model, inputs of 2 examples, unpressed logits) of the shipped reference model."""
    from vidpress.synthetic import make_split
    from vidpress.synthetic.reference import example_inputs, load_reference

    model, processor = load_reference(attn_implementation="eager")
    inputs = example_inputs(processor, make_split("val", 2))
    with torch.no_grad():
        return model, inputs, model(**inputs).logits


# --- the declaration ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_declares_the_contract(name):
    cls = presses.PRESSES[name]
    press = presses.get(name)
    assert cls.name == name and press.name == name
    assert type(presses.get(name.upper())) is cls
    for flag in ("query_aware", "acts_in_llm", "needs_vision_stats", "needs_policy", "count_follows_content",
                 "supports_frame_budgets"):
        assert isinstance(getattr(press, flag), bool), flag
    assert press.vision_layer is None or isinstance(press.vision_layer, int)
    assert press.acts_in_llm == isinstance(press, LayerPress)  # the adapter runs a LayerPress's schedule in the LLM
    if not press.supports_frame_budgets:  # refused by name, with the declared reason
        assert isinstance(press.no_frame_budgets_because, str) and press.no_frame_budgets_because
        with pytest.raises(ValueError, match=f"{cls.__name__} \\({name}\\) does not take frame_budgets"):
            presses.get(name, frame_budgets="vidcom2")
    for frames in (1, 8, 13):
        for layers in (None, 4, 28):
            floor = press.min_retention(frames, layers)
            assert isinstance(floor, float) and 0.0 <= floor <= 1.0, (frames, layers, floor)
    knobs = {f.name for f in dataclasses.fields(cls)}
    declared = {key for klass in cls.__mro__ if issubclass(klass, Press) for key, value in vars(klass).items()
                if not key.startswith("_") and not callable(value)
                and not isinstance(value, (property, classmethod, staticmethod))}
    assert declared - knobs <= CONTRACT, f"{cls.__name__} declares {sorted(declared - knobs - CONTRACT)} off-contract"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", NAMES)
def test_non_finite_features_are_rejected(name, bad):
    x = torch.randn(2, 4, 8)
    x[1, 2, 3] = bad
    with pytest.raises(ValueError, match="features"):
        presses.get(name, retention=0.5).select(VideoTokens(x, (2, 2, 2)))


# --- selections ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("T", [1, 3, 8])
@pytest.mark.parametrize("name", VARIANTS)
def test_retention_one_keeps_every_token(name, T, policy):
    tokens, query = video(T)
    selection = build(name, 1.0, policy).select(tokens, query)
    assert torch.equal(selection.keep_indices, torch.arange(tokens.num_tokens)) and selection.features is None
    assert selection.retention == 1.0


@pytest.mark.parametrize("R", [0.05, 0.25, 0.5])
@pytest.mark.parametrize("T", [2, 8, 13])
@pytest.mark.parametrize("name", VARIANTS)
def test_selection_is_valid_deterministic_and_keeps_the_promised_budget(name, T, R, policy):
    tokens, query = video(T)
    N, M, D = tokens.num_tokens, tokens.tokens_per_frame, tokens.features.shape[-1]
    press = build(name, R, policy)
    selection = press.select(tokens, query)
    check_valid(selection, N)
    keep = selection.keep_indices
    if selection.frame_budgets is not None:
        assert selection.frame_budgets.tolist() == torch.bincount(keep // M, minlength=T).tolist()
    if selection.features is not None:
        assert selection.features.shape == (keep.numel(), D) and selection.features.dtype == tokens.features.dtype
    again = build(name, R, policy).select(tokens, query)
    assert torch.equal(again.keep_indices, keep)
    assert (again.features is None and selection.features is None) or torch.equal(again.features, selection.features)
    if press.acts_in_llm:  # the layers are checked on the model below
        assert press.prunes_before_llm or selection.retention == 1.0  # else nothing is dropped before the LLM
        return
    floor = press.min_retention(T)
    target = max(R, floor)
    assert selection.retention >= floor - 1e-9
    if name in GRANULARITY:
        assert abs(selection.retention - target) <= GRANULARITY[name](T, M) + 1e-9, selection.retention
    else:
        assert selection.num_kept == round(target * N)


# --- on the model -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("R", [0.1, 0.75])
@pytest.mark.parametrize("name", VARIANTS)
def test_min_retention_and_budget_in_the_model(name, R, reference):
    model, inputs, _ = reference
    press = build(name, R, CACOVID_POLICY)
    with torch.no_grad(), press(model) as pressed:
        model(**inputs)
    report = pressed.last_report
    T, M, N = report.videos[0].num_frames, report.videos[0].tokens_per_frame, report.videos[0].num_tokens
    assert all(v.num_tokens == N for v in report.videos)
    for selection in report.selections:
        check_valid(selection, N)
    floor = press.min_retention(T, len(get_adapter(model).text_layers()))
    target = max(R, floor)
    assert report.retention >= floor - 1e-9
    if name in AT_MOST:
        assert report.retention <= target + GRANULARITY[name](T, M) + 1e-9, report.retention
    elif name in GRANULARITY:
        assert abs(report.retention - target) <= GRANULARITY[name](T, M) + 1e-9, report.retention
    elif press.acts_in_llm:  # each stage keeps round(fraction * N) tokens per sample, at least one
        assert abs(report.retention - target) <= 1 / N, report.retention
    else:
        assert [s.num_kept for s in report.selections] == [round(target * N)] * len(report.selections)


@pytest.mark.parametrize("name", NAMES)
def test_post_init_from_model_runs_once_on_entry(name, reference):
    model, inputs, _ = reference
    press = build(name, 0.3, CACOVID_POLICY)
    calls, original = [], press.post_init_from_model

    def spy(m):
        calls.append(m)
        original(m)

    press.post_init_from_model = spy
    block = press(model)
    assert not calls
    with block:
        assert len(calls) == 1 and calls[0] is model
        with torch.no_grad():
            model(**inputs)
    assert len(calls) == 1


@pytest.mark.parametrize("name", VARIANTS)
def test_the_model_is_unchanged_after_the_block(name, reference):
    model, inputs, logits = reference
    state = {k: v.clone() for k, v in model.state_dict().items()}
    configs = {k: m.config for k, m in model.named_modules() if hasattr(m, "config")}
    with torch.no_grad():
        with build(name, 0.3, CACOVID_POLICY)(model) as pressed:
            model(**inputs)
        report = pressed.last_report
        assert report.retention < 1.0  # the press did drop tokens
        assert torch.equal(model(**inputs).logits, logits)
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())
    for key, module in model.named_modules():
        assert not module._forward_pre_hooks and not module._forward_hooks, key
        assert not hasattr(module, "_vidpress_owner"), key
        assert not hasattr(module, "config") or module.config is configs[key], key
    assert "generate" not in vars(model) and "_vidpress_pressed" not in vars(model)


@pytest.fixture(scope="module")
def unpressed(tiny_model):
    """Per (family, attention): the inputs, logits and greedy generation of the unpressed tiny model, cached."""
    cache = {}

    def get(family: str, attn: str):
        if (family, attn) not in cache:
            model, processor = tiny_model(family, attn)
            inputs = make_inputs(processor, [tiny_video(8)], "What happens?")
            with torch.no_grad():
                cache[family, attn] = inputs, model(**inputs).logits, model.generate(**inputs, **GENERATE)
        return cache[family, attn]

    return get


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", VARIANTS)
def test_retention_one_is_the_unpressed_model(name, family, tiny_model, unpressed):
    for attn in ("eager", "sdpa"):
        model, _ = tiny_model(family, attn)
        inputs, logits, generation = unpressed(family, attn)
        press = build(name, 1.0, None) if name.endswith(FCA) else presses.get(name, retention=1.0)
        with torch.no_grad(), press(model) as pressed:
            out = model(**inputs).logits
            gen = model.generate(**inputs, **GENERATE)
        assert torch.equal(out, logits), attn  # max abs diff 0
        assert torch.equal(gen.sequences, generation.sequences), attn
        assert all(torch.equal(a, b) for a, b in zip(gen.logits, generation.logits)), attn
        assert pressed.last_report.retention == 1.0
