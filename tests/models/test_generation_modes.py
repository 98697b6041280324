"""The generation-mode matrix: every family x {plain, pre-LLM press, in-LLM presses} x every way of calling the model.

The in-LLM presses: FastV ("llm", at a layer that fits each tiny model) and every other registered in-LLM press,
built by name with its defaults (skipped, with the reason, on a model its default stages do not fit).

- At retention 1 (nothing dropped) a pressed call gives the unpressed model's output: bit for bit for the pre-LLM
  press; for the in-LLM press the cut machinery runs while keeping every token (attention over a re-packed sequence
  can differ in the last float bits), so to 1e-5 with identical tokens.
- Below retention 1, a batch of two prompts with videos of different lengths gives each prompt its per-sample result.
- Every mode leaves the model as it found it.
"""

import dataclasses
import threading
from dataclasses import dataclass

import pytest
import torch
from transformers.generation.streamers import BaseStreamer

from vidpress import presses
from vidpress.models import get_adapter
from vidpress.presses import FastVPress, VidCom2Press
from vidpress.testing import FAMILIES, make_inputs, tiny_model_and_processor, tiny_video

# ~200 generate calls over 5 families: the longest module of the suite (`-m "not slow"` skips it).
pytestmark = pytest.mark.slow

NEW = 4
QUESTIONS = ["What happens?", "Which colour is the square that moves fastest in the video?"]
MODES = {
    "greedy": dict(do_sample=False),
    "sample": dict(do_sample=True, top_k=0, temperature=1.0),
    "beams": dict(num_beams=2, do_sample=False),
    "return_sequences": dict(num_return_sequences=2, do_sample=True, top_k=0),
    "no_cache": dict(do_sample=False, use_cache=False),
    "inputs_embeds": dict(do_sample=False),
    "streamer": dict(do_sample=False),
    "continuation": dict(do_sample=False),
    "forward_loop": dict(do_sample=False),
}
# Sampling draws one random number stream for the whole batch, so per-sample runs legitimately differ.
DETERMINISTIC = [m for m in MODES if m not in ("sample", "return_sequences")]
#: the registered presses acting only inside the LLM besides FastV (which runs as "llm"), each a kind of its own; those
#: that also prune before the LLM (FlashVID, HoliTom) cannot keep everything by their stages alone: OTHER_PATHS below
OTHER_IN_LLM = [name for name, cls in sorted(presses.PRESSES.items())
                if cls.acts_in_llm and not cls.prunes_before_llm and cls is not FastVPress]
KINDS = ["pre", "llm", *OTHER_IN_LLM]
#: with VidCom²'s frame budgets (per-frame stage quotas): FastV ("llm+fca") and every other in-LLM press that takes them
FCA_KINDS = ["llm+fca", *(name + "+fca" for name in OTHER_IN_LLM if presses.PRESSES[name].supports_frame_budgets)]


@dataclass
class KeepAllAfterLayer(FastVPress):
    """The in-LLM machinery (cut, re-pad, masks, positions, cache) keeping every token."""

    def schedule(self, num_layers):
        return [(self.layer, 1.0)]


@pytest.fixture(scope="module")
def models(tiny_model):
    """(model, processor) per family; Qwen3-VL with 3 LLM layers so one layer follows its 2 DeepStack layers."""
    cache = {}

    def get(family):
        if family not in cache:
            if family == "qwen3_vl":
                cache[family] = tiny_model_and_processor(family, text_config={"num_hidden_layers": 3})
            else:
                cache[family] = tiny_model(family)
        return cache[family]

    return get


def in_llm_layer(family):
    return 2 if family == "qwen3_vl" else 1


def batch_inputs(processor, family, samples=(0, 1)):
    # LLaVA processors stack the videos of a call, so their frame counts must match
    frames = (8, 8) if family.startswith("llava") else (8, 12)
    videos = [tiny_video(frames[i], seed=1 + i) for i in samples]
    return make_inputs(processor, videos, [QUESTIONS[i] for i in samples])


class Recorder(BaseStreamer):
    def __init__(self):
        self.chunks, self.ended = [], False

    def put(self, value):
        self.chunks.append(value.clone())

    def end(self):
        self.ended = True


def run(model, inputs, mode):
    """Run `mode` and return (sequences [N, L+NEW] or new tokens, logits [steps, N, V], streamed chunks or None)."""
    # a random-weight model may emit a visual placeholder, which a later no-cache step would take for video
    suppress = [model.config.video_token_id, model.config.image_token_id]
    options = dict(max_new_tokens=NEW, output_logits=True, return_dict_in_generate=True, suppress_tokens=suppress,
                   **MODES[mode])
    torch.manual_seed(0)
    if mode == "inputs_embeds":  # generate then returns the new tokens only, pressed or not
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        inputs = {k: v for k, v in inputs.items() if k != "input_ids"} | {"inputs_embeds": embeds}
    if mode == "streamer":
        streamer = Recorder()
        out = model.generate(**inputs, streamer=streamer, **options)
        assert streamer.ended
        return out.sequences, torch.stack(out.logits), streamer.chunks
    if mode == "continuation":  # 2 tokens, then 2 more from the returned cache and sequences
        first = model.generate(**{**inputs, **dict(options, max_new_tokens=2)})
        mask = torch.cat([inputs["attention_mask"],
                          torch.ones_like(first.sequences[:, inputs["input_ids"].shape[1]:])], 1)
        # as with the unpressed model: the video is in the cache, so no pixel values
        rest = dict(input_ids=first.sequences, attention_mask=mask, past_key_values=first.past_key_values)
        second = model.generate(**rest, **dict(options, max_new_tokens=NEW - 2))
        return second.sequences, torch.stack(first.logits + second.logits), None
    if mode == "forward_loop":  # the caller's own decoding loop: prefill, then one token at a time from the cache
        out = model(**inputs, use_cache=True)
        logits, tokens = [out.logits[:, -1]], []
        mask = inputs["attention_mask"]
        for _ in range(NEW - 1):
            tokens.append(logits[-1].index_fill(1, torch.tensor(suppress), float("-inf")).argmax(-1, keepdim=True))
            mask = torch.cat([mask, torch.ones_like(tokens[-1])], 1)
            out = model(input_ids=tokens[-1], attention_mask=mask, past_key_values=out.past_key_values, use_cache=True)
            logits.append(out.logits[:, -1])
        tokens.append(logits[-1].index_fill(1, torch.tensor(suppress), float("-inf")).argmax(-1, keepdim=True))
        return torch.cat([inputs["input_ids"], *tokens], 1), torch.stack(logits), None
    out = model.generate(**inputs, **options)
    return out.sequences, torch.stack(out.logits), None


def call(model, inputs, mode):
    with torch.no_grad():
        return run(model, inputs, mode)


def keep_all(press):
    """`press` with every stage's fraction at 1: the in-LLM machinery runs while keeping every token."""
    cls = type(press)

    def schedule(self, num_layers, *args, **kwargs):
        return [(layer, 1.0) for layer, _ in cls.schedule(self, num_layers, *args, **kwargs)]

    keeper = dataclass(type(f"KeepAll{cls.__name__}", (cls,), {"schedule": schedule}))
    return keeper(**{f.name: getattr(press, f.name) for f in dataclasses.fields(press)})


def press_for(kind, family, retention, model=None):
    """kind "pre": VidCom²; "llm": FastV; "llm+fca": FastV with VidCom²'s frame budgets (per-frame stage quotas);
    any other kind: that registered in-LLM press with its defaults ("<name>+fca": and frame_budgets="vidcom2")."""
    if kind == "pre":
        return VidCom2Press(retention=retention)
    if kind in ("llm", "llm+fca"):
        layer = in_llm_layer(family)
        return (KeepAllAfterLayer(retention=0.5, layer=layer) if retention == 1.0
                else FastVPress(retention=retention, layer=layer,
                                frame_budgets="vidcom2" if kind == "llm+fca" else None))
    name, knobs = (kind.removesuffix("+fca"), {"frame_budgets": "vidcom2"}) if kind.endswith("+fca") else (kind, {})
    press = presses.get(name, retention=0.5 if retention == 1.0 else retention, **knobs)
    try:
        press.pruner(get_adapter(model))  # its stages on this model (building the pruner installs nothing)
    except ValueError as error:
        pytest.skip(f"{kind}'s default stages do not fit the tiny {family}: {error}")
    return keep_all(press) if retention == 1.0 else press


#: The registered presses whose path through the model differs from the two above (VidCom² before the LLM, FastV in
#: it): those that record vision-encoder statistics while the model encodes, and those acting both before and inside
#: the LLM; each in every deterministic mode on a family with M-RoPE and one with 1-D positions and a newline token.
OTHER_PATHS = [name for name in presses.available()
               if presses.PRESSES[name].needs_vision_stats or presses.PRESSES[name].prunes_before_llm]
OTHER_PATH_FAMILIES = ["qwen2_5_vl", "llava_onevision"]


def assert_restored(model):
    assert "generate" not in vars(model) and "_vidpress_pressed" not in vars(model)
    assert not model._forward_pre_hooks and not model._forward_hooks
    for layer in model.model.language_model.layers:
        assert not layer._forward_pre_hooks and not hasattr(layer.self_attn, "_vidpress_owner")


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_nothing_dropped_is_the_unpressed_model(models, family, kind, mode):
    if mode == "forward_loop" and family.startswith("qwen"):
        pytest.skip("transformers 5.23's own Qwen-VL forward fails in such a loop (it derives 3-D positions for the "
                    "whole attention mask, not the new token); the pressed loop is checked against generate below")
    model, processor = models(family)
    inputs = batch_inputs(processor, family)
    ref_seq, ref_logits, ref_chunks = call(model, inputs, mode)
    with press_for(kind, family, 1.0, model)(model):
        seq, logits, chunks = call(model, inputs, mode)
    assert torch.equal(seq, ref_seq)
    if kind == "pre":
        assert torch.equal(logits, ref_logits)
    else:
        assert torch.allclose(logits, ref_logits, atol=1e-5, rtol=0)
    if mode == "streamer":
        assert len(chunks) == len(ref_chunks) and all(torch.equal(a, b) for a, b in zip(chunks, ref_chunks))
    assert_restored(model)


@pytest.mark.parametrize("mode", DETERMINISTIC)
@pytest.mark.parametrize("kind", [*KINDS, *FCA_KINDS])
@pytest.mark.parametrize("family", FAMILIES)
def test_batched_equals_per_sample(models, family, kind, mode):
    model, processor = models(family)
    batch = batch_inputs(processor, family)
    press = press_for(kind, family, 0.5, model)
    with press(model) as pressed:
        seq, logits, _ = call(model, batch, mode)
        kept_batch = [s.num_kept for s in pressed.last_report.selections]
        assert pressed.last_report.retention < 1
        L = batch["input_ids"].shape[1]
        copies, beams = seq.shape[0] // 2, logits.shape[1] // 2  # return sequences / beams per prompt
        for i in range(2):
            single = batch_inputs(processor, family, samples=(i,))
            s_seq, s_logits, _ = call(model, single, mode)
            assert [s.num_kept for s in pressed.last_report.selections] == kept_batch[i : i + 1]
            assert torch.equal(s_seq[:, single["input_ids"].shape[1]:], seq[i * copies : (i + 1) * copies, L:])
            assert torch.allclose(s_logits, logits[:, i * beams : (i + 1) * beams], atol=1e-5, rtol=0)
    assert_restored(model)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_continuation_equals_one_longer_call(models, family, kind):
    """Continuing from a pressed generate's cache gives the tokens of one longer pressed call (R < 1)."""
    model, processor = models(family)
    inputs = batch_inputs(processor, family)
    with press_for(kind, family, 0.5, model)(model):
        long_seq, long_logits, _ = call(model, inputs, "greedy")
        cont_seq, cont_logits, _ = call(model, inputs, "continuation")
        loop_seq, loop_logits, _ = call(model, inputs, "forward_loop")
    assert torch.equal(cont_seq, long_seq) and torch.equal(loop_seq, long_seq)
    assert torch.allclose(cont_logits, long_logits, atol=1e-5, rtol=0)
    assert torch.allclose(loop_logits, long_logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_foreign_cache_or_new_prompt_is_refused(models, family):
    model, processor = models(family)
    inputs = batch_inputs(processor, family)
    with torch.no_grad():
        plain = model.generate(**inputs, max_new_tokens=2, return_dict_in_generate=True)
        with VidCom2Press(retention=0.5)(model):
            with pytest.raises(ValueError, match="did not produce"):
                model.generate(**dict(inputs, input_ids=plain.sequences, attention_mask=None),
                               past_key_values=plain.past_key_values, max_new_tokens=1)
            first = model.generate(**inputs, max_new_tokens=2, return_dict_in_generate=True)
            other = first.sequences.clone()
            other[:, -3] += 1  # not the prompt the cache was made from
            with pytest.raises(ValueError, match="must start with the full prompt"):
                model.generate(input_ids=other, past_key_values=first.past_key_values, max_new_tokens=1)


@pytest.mark.parametrize("kind", ["plain", *KINDS])
@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_the_same_parameters(models, family, kind):
    model, processor = models(family)
    inputs = dict(batch_inputs(processor, family))
    inputs["labels"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)

    def grads():
        model.zero_grad(set_to_none=True)
        loss = model(**inputs).loss
        loss.backward()
        names = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        model.zero_grad(set_to_none=True)
        return names

    ref = grads()
    assert any(n.startswith("model.visual") or "vision_tower" in n for n in ref)
    if kind == "plain":
        return
    with press_for(kind, family, 0.5, model)(model):
        assert grads() == ref


def test_one_press_per_model_and_all_or_nothing_entry(models):
    model, processor = models("qwen2_5_vl")
    inputs = batch_inputs(processor, "qwen2_5_vl")
    with torch.no_grad():
        ref = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        outer = VidCom2Press(retention=0.5)(model)
        outer.__enter__()
        with pytest.raises(RuntimeError, match="already inside a `with VidCom2Press"):
            FastVPress(retention=0.6, layer=1)(model).__enter__()  # refused before it installs anything
        pressed = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        outer.__exit__(None, None, None)
        assert_restored(model)
        assert torch.equal(model.generate(**inputs, max_new_tokens=2, do_sample=False), ref)
        assert torch.equal(pressed[:, : ref.shape[1] - 2], ref[:, :-2])  # the caller's prompt comes back
        with pytest.raises(ValueError, match="below the LLM"):  # fails after claiming: everything is undone
            FastVPress(retention=0.6, layer=5)(model).__enter__()
        assert_restored(model)
        assert torch.equal(model.generate(**inputs, max_new_tokens=2, do_sample=False), ref)


@pytest.mark.parametrize("option", [{"prompt_lookup_num_tokens": 2}, {"assistant_early_exit": 1}])
def test_assisted_decoding_is_a_clear_error(models, option):
    model, processor = models("qwen2_5_vl")
    inputs = make_inputs(processor, [tiny_video(8)], "What happens?")
    with (torch.no_grad(), VidCom2Press(retention=0.5)(model),
          pytest.raises(ValueError, match="not supported under a press")):
        model.generate(**inputs, max_new_tokens=2, **option)
    assert_restored(model)


def test_threads_each_with_its_own_model():
    results, errors = {}, []

    def work(family):
        try:
            model, processor = tiny_model_and_processor(family)
            inputs = batch_inputs(processor, family)
            with torch.no_grad():
                ref = model.generate(**inputs, max_new_tokens=2, do_sample=False)
                with VidCom2Press(retention=1.0)(model):
                    out = [model.generate(**inputs, max_new_tokens=2, do_sample=False) for _ in range(3)]
            results[family] = all(torch.equal(o, ref) for o in out)
            assert_restored(model)
        except Exception as error:  # reported below with the family
            errors.append((family, error))

    threads = [threading.Thread(target=work, args=(f,)) for f in ("qwen2_5_vl", "llava_onevision")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == {"qwen2_5_vl": True, "llava_onevision": True}


def test_a_model_shared_by_threads_is_a_clear_error_and_stays_intact(models):
    model, processor = models("llava_onevision")
    inputs = batch_inputs(processor, "llava_onevision")
    with torch.no_grad():
        ref = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    entered, release = threading.Event(), threading.Event()

    def holder():
        with torch.no_grad(), VidCom2Press(retention=0.5)(model):
            entered.set()
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    entered.wait(30)
    try:
        for attempt in (lambda: VidCom2Press(retention=0.5)(model).__enter__(),
                        lambda: model.generate(**inputs, max_new_tokens=2, do_sample=False),
                        lambda: model(**inputs)):
            with pytest.raises(RuntimeError, match="another thread"):
                with torch.no_grad():
                    attempt()
    finally:
        release.set()
        thread.join()
    assert_restored(model)
    with torch.no_grad():
        assert torch.equal(model.generate(**inputs, max_new_tokens=2, do_sample=False), ref)


def test_a_streamer_sees_the_callers_prompt(models):
    model, processor = models("llava_next_video")
    inputs = make_inputs(processor, [tiny_video(8)], "What happens?")
    streamer = Recorder()
    with torch.no_grad(), VidCom2Press(retention=0.25)(model):
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, streamer=streamer)
    assert torch.equal(streamer.chunks[0], inputs["input_ids"]) and streamer.ended
    assert torch.equal(torch.cat([c.view(1, -1) for c in streamer.chunks], 1), out)


@pytest.mark.parametrize("mode", DETERMINISTIC)
@pytest.mark.parametrize("family", OTHER_PATH_FAMILIES)
@pytest.mark.parametrize("name", OTHER_PATHS)
def test_other_press_paths_batched_equals_per_sample(models, name, family, mode):
    """Below retention 1, each press of OTHER_PATHS gives a batch of two prompts their per-sample results in every
    deterministic mode, and leaves the model as it found it."""
    model, processor = models(family)
    batch = batch_inputs(processor, family)
    press = presses.get(name, retention=0.5)
    with press(model) as pressed:
        seq, logits, _ = call(model, batch, mode)
        kept_batch = [s.keep_indices for s in pressed.last_report.selections]
        L = batch["input_ids"].shape[1]
        copies, beams = seq.shape[0] // 2, logits.shape[1] // 2
        for i in range(2):
            single = batch_inputs(processor, family, samples=(i,))
            s_seq, s_logits, _ = call(model, single, mode)
            assert torch.equal(pressed.last_report.selections[0].keep_indices, kept_batch[i])
            assert torch.equal(s_seq[:, single["input_ids"].shape[1]:], seq[i * copies : (i + 1) * copies, L:])
            assert torch.allclose(s_logits, logits[:, i * beams : (i + 1) * beams], atol=1e-5, rtol=0)
    assert_restored(model)
