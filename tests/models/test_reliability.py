"""Reliability of every registered press on every model family, in four categories: generation modes, bad inputs,
the block's lifecycle, threads.

Presses come from the registry and families from `vidpress.testing.FAMILIES`, so a new press or family is swept
without an edit here. Each press runs at retention 0.5 (a press that needs a trained policy, declared by
`needs_policy`, at retention 1: the tiny models have no policy of their own). The default run pairs every press with
one family (press i with family i mod 5), so every press and every family are met, and the generation modes for one
press of each kind (each combination of declared flags); the full sweep, every press on every family, is marked
slow.

- generation modes: a left-padded batch of two videos equals its samples run alone (greedy), `use_cache=False`
  equals the cached run, beam search and sampling give back the caller's prompt, a continuation from the returned
  cache equals one longer call, `inputs_embeds` equal `input_ids`.
- bad inputs: a prompt whose placeholders do not match its video, neither ids nor embeddings, non-finite pixels
  and refused generation modes are clear errors; prompts without video (text only, image only) run unchanged.
- lifecycle: one block entered twice, a second press inside it, an exception inside it, a deep copy inside it.
- threads: a call from another thread into an open block is refused; another thread presses its own deep copy.
After each, the model is exactly as it was: nothing installed, the unpressed outputs unchanged.
"""

import copy
import threading

import pytest
import torch

from vidpress import presses
from vidpress.testing import FAMILIES, make_inputs, tiny_image, tiny_model_and_processor, tiny_video

NAMES = presses.available()
NEW = 3
QUESTIONS = ["What happens?", "Which colour is the square that moves fastest?"]
ROTATION = [(name, FAMILIES[i % len(FAMILIES)]) for i, name in enumerate(NAMES)]
FLAGS = ("query_aware", "acts_in_llm", "needs_vision_stats", "needs_policy")
# one press per combination of declared flags, each on its rotation family: the default generation-mode run
KINDS = list({tuple(getattr(presses.PRESSES[name], flag) for flag in FLAGS): (name, family)
              for name, family in reversed(ROTATION)}.values())


def cases(default) -> list:
    """Every press on every family; the pairs in `default` run by default, the rest are marked slow."""
    return [pytest.param(name, family, id=f"{name}-{family}",
                         marks=() if (name, family) in default else pytest.mark.slow)
            for name in NAMES for family in FAMILIES]


CASES = cases(ROTATION)


@pytest.fixture(scope="module")
def tiny():
    """(model, processor) per family; 4 LLM layers (Qwen3-VL 6: its 2 DeepStack layers come before any in-LLM stage)
    so that the presses inside the LLM have layers to drop tokens before."""
    cache = {}

    def get(family):
        if family not in cache:
            layers = 6 if family == "qwen3_vl" else 4
            cache[family] = tiny_model_and_processor(family, text_config={"num_hidden_layers": layers})
        return cache[family]

    return get


def build(name: str):
    return presses.get(name, retention=1.0 if presses.PRESSES[name].needs_policy else 0.5)


def suppressed(model) -> list[int]:
    # a random-weight model may emit a visual placeholder, which a no-cache step would then take for video
    return [t for t in (model.config.video_token_id, getattr(model.config, "image_token_id", None)) if t is not None]


def generate(model, inputs, new=NEW, **options):
    options = dict(dict(do_sample=False), **options)
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=new, suppress_tokens=suppressed(model), output_logits=True,
                              return_dict_in_generate=True, **options)


def batch(processor, family):
    # LLaVA processors stack the videos of a call, so their frame counts must match
    frames = (8, 8) if family.startswith("llava") else (8, 12)
    videos = [tiny_video(frames[i], seed=1 + i) for i in range(2)]
    singles = [make_inputs(processor, [video], question) for video, question in zip(videos, QUESTIONS)]
    return make_inputs(processor, videos, QUESTIONS), singles


def footprint(model) -> dict:
    """What a press block could leave behind, per module: hooks, vidpress attributes, the attention implementation,
    instance-level generate / __deepcopy__."""
    return {name: (len(m._forward_pre_hooks), len(m._forward_hooks), sorted(k for k in vars(m) if "vidpress" in k),
                   getattr(getattr(m, "config", None), "_attn_implementation", None),
                   "generate" in vars(m), "__deepcopy__" in vars(m))
            for name, m in model.named_modules()}


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def assert_same_tokens(a, b, rows_a=slice(None), rows_b=slice(None)):
    assert torch.equal(a.sequences[rows_a, -NEW:], b.sequences[rows_b, -NEW:])
    for x, y in zip(a.logits, b.logits):
        torch.testing.assert_close(x[rows_a], y[rows_b], atol=1e-5, rtol=0)


@pytest.fixture
def case(tiny, request):
    """(model, processor, press, batch inputs, per-sample inputs) and, after the test, the model checked intact."""
    name, family = request.node.callspec.params["name"], request.node.callspec.params["family"]
    model, processor = tiny(family)
    inputs, singles = batch(processor, family)
    ref = logits(model, inputs)
    clean = footprint(model)  # after a first call: transformers installs its own output-recording hooks on first use
    yield model, processor, build(name), inputs, singles
    assert footprint(model) == clean
    assert torch.equal(logits(model, inputs), ref)


# --- generation modes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, family", cases(KINDS))
def test_generation_modes(case, name, family):
    model, processor, press, inputs, singles = case
    L = inputs["input_ids"].shape[1]
    embeds = {k: v for k, v in inputs.items() if k != "input_ids"}
    embeds["inputs_embeds"] = model.get_input_embeddings()(inputs["input_ids"]).detach()
    # where the unpressed model computes the same logits from inputs_embeds as from input_ids, the pressed one must
    # answer the same too (Qwen2-VL and Qwen3-VL do not: their positions from embeddings alone differ slightly, e.g.
    # 0.007 on Qwen2-VL, enough to flip a press's ranking; equal greedy tokens alone would not show it)
    with torch.no_grad():
        same_from_embeds = torch.allclose(model(**embeds).logits, model(**inputs).logits, atol=1e-5)
    with press(model) as pressed:
        batched = generate(model, inputs)
        assert pressed.last_report.retention <= 1.0 and torch.equal(batched.sequences[:, :L], inputs["input_ids"])
        for i, single in enumerate(singles):
            assert_same_tokens(generate(model, single), batched, 0, i)
        assert_same_tokens(generate(model, inputs, use_cache=False), batched)
        beams = generate(model, inputs, num_beams=2)
        sampled = generate(model, inputs, do_sample=True, top_k=0, num_return_sequences=2)
        for out, copies in ((beams, 1), (sampled, 2)):  # the caller's prompt comes back, once per sequence
            assert torch.equal(out.sequences[:, :L], inputs["input_ids"].repeat_interleave(copies, 0))
        first = generate(model, inputs, new=NEW - 1)
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(first.sequences[:, L:])], 1)
        rest = generate(model, dict(input_ids=first.sequences, attention_mask=mask,
                                    past_key_values=first.past_key_values), new=1)
        assert torch.equal(rest.sequences, batched.sequences)
        from_embeds = generate(model, embeds)  # generate then returns the new tokens only, pressed or not
        assert from_embeds.sequences.shape == (2, NEW)
        assert torch.equal(from_embeds.sequences, batched.sequences[:, L:]) or not same_from_embeds


# --- bad inputs ---------------------------------------------------------------------------------------------------

def image_inputs(processor):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(text=[text], images=[tiny_image(seed=5)], return_tensors="pt")


@pytest.mark.parametrize("name, family", CASES)
def test_bad_inputs(case, name, family):
    model, processor, press, inputs, _ = case
    video_token = model.config.video_token_id
    text_only = processor(text=["What is a red square?"], return_tensors="pt")
    image_only = image_inputs(processor)
    unpressed = [logits(model, text_only), logits(model, image_only)]
    missing = dict(inputs, input_ids=inputs["input_ids"].clone())
    missing["input_ids"][0, (missing["input_ids"][0] == video_token).nonzero()[0]] = processor.tokenizer.pad_token_id
    no_ids = {k: v for k, v in inputs.items() if k != "input_ids"}
    pixels = "pixel_values_videos"
    nan = dict(inputs, **{pixels: inputs[pixels].clone().index_fill_(0, torch.tensor([0]), float("nan"))})
    with press(model):
        with pytest.raises(ValueError, match="video placeholder tokens but the videos give"):
            logits(model, missing)
        with pytest.raises(ValueError, match="needs input_ids or inputs_embeds"):
            logits(model, no_ids)
        with pytest.raises(ValueError, match="NaN or Inf"):
            logits(model, nan)
        with pytest.raises(ValueError, match="not supported under a press"):
            generate(model, inputs, prompt_lookup_num_tokens=2)
        for inputs_without_video, ref in zip((text_only, image_only, text_only), unpressed + unpressed[:1]):
            assert torch.equal(logits(model, inputs_without_video), ref)
        logits(model, inputs)  # a video between prompts without video
        assert torch.equal(logits(model, image_only), unpressed[1])


# --- lifecycle ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, family", CASES)
def test_lifecycle(case, name, family):
    model, processor, press, inputs, _ = case
    clean, unpressed = footprint(model), logits(model, inputs)
    block = press(model)
    with block:
        pressed = logits(model, inputs)
        with pytest.raises(RuntimeError, match="already inside a `with"):  # a second press, or this one again
            build(name)(model).__enter__()
        with pytest.raises(RuntimeError, match="already inside a `with"):
            block.__enter__()
        assert torch.equal(logits(model, inputs), pressed)
        twin = copy.deepcopy(model)
    assert footprint(twin) == clean and torch.equal(logits(twin, inputs), unpressed)
    with pytest.raises(KeyError, match="boom"):
        with block:  # entered again after it exited
            assert torch.equal(logits(model, inputs), pressed)
            raise KeyError("boom")
    assert footprint(model) == clean
    with press(twin):
        assert torch.equal(logits(twin, inputs), pressed)
    assert footprint(twin) == clean


# --- threads ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, family", CASES)
def test_threads(case, name, family):
    model, processor, press, inputs, _ = case
    outcome = {}

    def other():
        try:
            logits(model, inputs)
        except RuntimeError as error:
            outcome["refused"] = str(error)
        twin = copy.deepcopy(model)  # the refusal's advice: a model of its own, pressed in its own block
        with build(name)(twin):
            outcome["copy"] = logits(twin, inputs)

    with press(model):
        pressed = logits(model, inputs)
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert torch.equal(logits(model, inputs), pressed)
    assert "another thread" in outcome.get("refused", "")
    assert torch.equal(outcome["copy"], pressed)
