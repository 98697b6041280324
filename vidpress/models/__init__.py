"""Model adapters, one per family, picked by `config.model_type`, and `apply_press`, the context manager
behind `press(model)`."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import threading

import torch

# One import line per adapter file: importing it registers its families (`@register_adapter`). The order is the
# order error messages list the families in.
# isort: off
from vidpress.models import qwen2_vl  # noqa: F401
from vidpress.models import llava  # noqa: F401
# isort: on
from vidpress.models.base import ADAPTERS, PIXEL_INPUTS, SEQUENCE_INPUTS, Adapter, PressReport, register_adapter
from vidpress.models.layer_pruning import LayerPruner

logger = logging.getLogger("vidpress")

# Guards the check-and-claim of a model by a press block, so two threads cannot both claim one model.
_CLAIM = threading.Lock()
# Generation features that bypass or duplicate the model's own forward in ways a press cannot follow.
_UNSUPPORTED_GENERATION = {
    "assistant_model": "assisted decoding (assistant_model)",
    "prompt_lookup_num_tokens": "prompt-lookup decoding (prompt_lookup_num_tokens)",
    "assistant_early_exit": "self-speculative decoding (assistant_early_exit)",
    "use_mtp": "multi-token-prediction decoding (use_mtp)",
    "custom_generate": "custom_generate",
}


def supported_model_types() -> list[str]:
    return [t for adapter in ADAPTERS for t in adapter.model_types]


def adapter_class(model_type: str | None) -> type[Adapter] | None:
    """The adapter class of the family `model_type` (a config's model_type) belongs to; None when unsupported."""
    return next((adapter for adapter in ADAPTERS if model_type in adapter.model_types), None)


def get_adapter(model) -> Adapter:
    """The adapter for `model`'s family; a clear error for anything else."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    adapter = adapter_class(model_type)
    if adapter is None:
        families = ", ".join(f"{a.family} ({'/'.join(a.model_types)})" for a in ADAPTERS)
        raise ValueError(f"unsupported model type {model_type!r} ({type(model).__name__}); supported families: "
                         f"{families}")
    if not hasattr(model, "model") or not hasattr(model, "generate"):
        raise ValueError(f"pass the *ForConditionalGeneration model of {adapter.family} (got {type(model).__name__})")
    return adapter(model)


class PressedModel:
    """Handle yielded by `with press(model) as pressed`: `pressed.last_report` describes the latest call."""

    def __init__(self, press, model, adapter: Adapter, pruner: LayerPruner | None = None):
        self.press, self.model, self.adapter, self.pruner = press, model, adapter, pruner
        self.last_report: PressReport | None = None
        self.thread = threading.get_ident()
        self._warned_no_video = False
        self._passthrough = False
        self._pending: _PromptMap | None = None

    def prepare(self, inputs: dict, for_generate: bool = False) -> dict:
        """Press `inputs` now and return the model kwargs; call the model on them inside `passthrough()`.

        Lets callers time the press step apart from the LLM; `model(**inputs)` does both in one go.
        """
        self._check_thread()
        return self._prepare(dict(inputs), for_generate)

    @contextlib.contextmanager
    def passthrough(self):
        """Inside this block the model's calls are not pressed again (their inputs already were)."""
        previous, self._passthrough = self._passthrough, True
        try:
            yield
        finally:
            self._passthrough = previous

    def _check_thread(self):
        # The hooks live on the shared module: a call from another thread would be pressed by this block's press
        # and would race with this thread's per-call state (report, layer-pruning maps).
        if threading.get_ident() != self.thread:
            raise RuntimeError(
                f"vidpress: this model is inside a `with {type(self.press).__name__}(...)(model)` block of another "
                "thread, so this call would be pressed by it and race with it; give each thread its own model "
                "(e.g. copy.deepcopy(model)) and its own press block"
            )

    def _prepare(self, kwargs: dict, for_generate: bool) -> dict:
        if not self.adapter.has_video(kwargs):
            if not self._warned_no_video:
                logger.warning("%s: no video in the inputs; the press does nothing for such calls",
                               type(self.press).__name__)
                self._warned_no_video = True
            self.last_report = PressReport()
            if self.pruner is not None:
                self.pruner.report = None
            return kwargs
        kwargs, self.last_report = self.adapter.press_inputs(self.press, kwargs, for_generate)
        if self.pruner is not None:
            self.pruner.begin(self.last_report.input_ids, kwargs.get("attention_mask"), self.last_report)
        return kwargs

    def forward_pre_hook(self, module, args, kwargs):
        if self._passthrough:  # the inputs were pressed already (generate, prepare)
            return _explicit_mask(args, kwargs)
        self._check_thread()
        kwargs = dict(inspect.signature(self.model.forward).bind_partial(*args, **kwargs).arguments)
        kwargs.update(kwargs.pop("kwargs", {}))
        cache = kwargs.get("past_key_values")
        if cache is not None and cache.get_seq_length() > 0:  # a decoding step of the caller's own loop
            prompt = getattr(cache, "vidpress_prompt", None)
            if prompt is None:  # a cache this block did not press: nothing to map
                return None
            return (), {**kwargs, **prompt.decode_step(kwargs, cache.get_seq_length())}
        self._pending = None
        original = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        pressed = self._prepare(kwargs, for_generate=False)
        if pressed is not kwargs and original is not None:
            self._pending = _PromptMap(kwargs.get("input_ids"), original.shape[1], pressed)
        return (), pressed

    def forward_hook(self, module, args, kwargs, output):
        """After a pressed prefill: mark its cache, so the caller's own decoding steps are mapped (`decode_step`)."""
        prompt, self._pending = self._pending, None
        cache = getattr(output, "past_key_values", None)
        if prompt is not None and cache is not None:
            cache.vidpress_prompt = prompt

    def generate(self, original, *args, **kwargs):
        self._check_thread()
        if args:  # generate(input_ids, ...) positional form
            kwargs["input_ids"] = args[0]
            args = args[1:]
        if "inputs" in kwargs and kwargs.get("input_ids") is None:  # generate(inputs=input_ids, ...)
            kwargs["input_ids"] = kwargs.pop("inputs")
        _check_generation_mode(self.press, self.model, kwargs)
        cache = kwargs.get("past_key_values")
        if cache is not None and cache.get_seq_length() > 0:
            return self._continue(original, args, kwargs)
        original_ids = kwargs.get("input_ids")
        pressed = self._prepare(kwargs, for_generate=True)
        if pressed is kwargs:
            with self.passthrough():
                return original(*args, **pressed)
        if original_ids is not None and pressed.get("streamer") is not None:
            pressed["streamer"] = _PromptStreamer(pressed["streamer"], original_ids)
        with self.passthrough():
            output = original(*args, **pressed)
        if original_ids is None:  # inputs_embeds only: generate returns the new tokens alone, as unpressed
            return output
        cache = getattr(output, "past_key_values", None)
        if cache is not None:  # so that generate can continue from this cache (see `_continue`)
            cache.vidpress_prompt = _PromptMap(original_ids, original_ids.shape[1], pressed)
        return _restore_prompt(output, original_ids, pressed["input_ids"].shape[1])

    def _continue(self, original, args, kwargs):
        """generate(...) from a cache: the caller passes its full sequence (the full prompt, as this wrapper
        returned it, plus new tokens), the cache holds the PRESSED prompt. Swap the full prompt for the pressed one
        (and its positions) so decoding continues exactly as one longer pressed call would."""
        cache = kwargs["past_key_values"]
        prompt: _PromptMap | None = getattr(cache, "vidpress_prompt", None)
        if prompt is None or prompt.original_ids is None:
            raise ValueError(
                f"{type(self.press).__name__}: generate got a past_key_values cache that this press block did not "
                "produce; under a press, continue only from the cache returned by a pressed generate "
                "(return_dict_in_generate=True) in the same block"
            )
        ids = kwargs.get("input_ids")
        if ids is None or kwargs.get("inputs_embeds") is not None:
            raise ValueError("continuing a pressed generate from its cache needs input_ids (the returned sequences "
                             "plus any new tokens), not inputs_embeds")
        continued = prompt.continuation(ids, kwargs.get("attention_mask"))
        tail = ids[:, prompt.original_length :]
        if ((tail == self.adapter.video_token_id) | (tail == self.adapter.image_token_id)).any():
            raise ValueError("continuing a pressed generate from its cache: the new tokens hold an image or video; "
                             "start a new pressed call with the whole conversation instead")
        # The cache holds the video: no pixels; every per-token input is rebuilt for the pressed sequence.
        dropped = {*PIXEL_INPUTS, *SEQUENCE_INPUTS, "mm_encoder_outputs", "position_ids"}
        kwargs = {k: v for k, v in kwargs.items() if k not in dropped} | continued
        with self.passthrough():
            output = original(*args, **kwargs)
        output_cache = getattr(output, "past_key_values", None)
        if output_cache is not None:
            output_cache.vidpress_prompt = prompt
        return _restore_prompt(output, prompt.original_ids, prompt.attention_mask.shape[1])


class _PromptMap:
    """How a pressed prefill's cache maps to the caller's view: the caller's full prompt [B, L] (ids when known)
    and the pressed prompt [B, L'] the cache holds, with its mask and positions. Tokens after the prompt follow
    generate's own rule: position = last prompt position + steps."""

    def __init__(self, original_ids: torch.Tensor | None, original_length: int, pressed: dict):
        self.original_ids, self.original_length = original_ids, original_length
        self.pressed_ids = pressed.get("input_ids")
        self.attention_mask = pressed["attention_mask"]
        self.position_ids = pressed["position_ids"]  # [B, L'] or [R, B, L']
        self.mm_token_type_ids = pressed.get("mm_token_type_ids")

    def _rows(self, rows: int) -> tuple:
        """The map's tensors for `rows` = B * copies rows (several return sequences per prompt)."""
        B = self.attention_mask.shape[0]
        if rows % B:
            raise ValueError(f"continuing a pressed call from its cache: got {rows} rows for a prompt batch of {B}")
        k = rows // B
        mask = self.attention_mask.repeat_interleave(k, 0)
        positions = self.position_ids.repeat_interleave(k, dim=self.position_ids.dim() - 2)
        return k, mask, positions

    def tail_positions(self, positions: torch.Tensor, first: int, count: int) -> torch.Tensor:
        steps = torch.arange(first, first + count, device=positions.device)
        return positions[..., -1:] + steps

    def continuation(self, ids: torch.Tensor, attention_mask: torch.Tensor | None) -> dict:
        """generate kwargs for `ids` [B, L + n] = the full prompt + n tokens, on the pressed prompt."""
        L = self.original_length
        k, mask, positions = self._rows(ids.shape[0])
        prompt = self.original_ids.repeat_interleave(k, 0).to(ids.device)
        if ids.shape[1] < L or not torch.equal(ids[:, :L], prompt):
            raise ValueError(
                "continuing a pressed generate from its cache: input_ids must start with the full prompt of the call "
                f"that made the cache ({prompt.shape[0]} rows of {L} tokens), as the returned sequences do"
            )
        tail = ids[:, L:]
        new_mask = torch.ones_like(tail) if attention_mask is None else attention_mask[:, L:].to(tail.dtype)
        out = {
            "input_ids": torch.cat([self.pressed_ids.repeat_interleave(k, 0), tail], dim=1),
            "attention_mask": torch.cat([mask, new_mask], dim=1),
            "position_ids": torch.cat([positions, self.tail_positions(positions, 1, tail.shape[1])], dim=-1),
        }
        if self.mm_token_type_ids is not None:
            types = self.mm_token_type_ids.repeat_interleave(k, 0)
            out["mm_token_type_ids"] = torch.cat([types, torch.zeros_like(tail, dtype=types.dtype)], dim=1)
        return out

    def decode_step(self, kwargs: dict, cached: int) -> dict:
        """A decoding step of the caller's own loop: q new tokens after `cached` cached ones. The caller's
        attention mask covers its full sequence [B, L + n]; the cache holds the pressed one [B, L' + n - q]."""
        new = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        rows, q = new.shape[:2]
        k, mask, positions = self._rows(rows)
        n = cached - mask.shape[1] + q  # tokens after the prompt, these q included
        out = {}
        caller_mask = kwargs.get("attention_mask")
        if caller_mask is not None and caller_mask.shape[1] == self.original_length + n:
            out["attention_mask"] = torch.cat([mask, caller_mask[:, self.original_length :].to(mask.dtype)], dim=1)
        elif caller_mask is not None and caller_mask.shape[1] != cached + q:
            raise ValueError(
                f"a decoding step after a pressed prefill got an attention_mask of {caller_mask.shape[1]} tokens; "
                f"expected the full sequence ({self.original_length + n}) or the pressed one ({cached + q})"
            )
        if kwargs.get("position_ids") is None:
            out["position_ids"] = self.tail_positions(positions, n - q + 1, q)
        return out


class _PromptStreamer:
    """Hands a streamer the caller's full prompt in place of the pressed one (generate's first `put`)."""

    def __init__(self, streamer, prompt: torch.Tensor):
        self.streamer, self.prompt = streamer, prompt

    def put(self, value):
        if self.prompt is not None:
            value, self.prompt = self.prompt.cpu(), None
        self.streamer.put(value)

    def end(self):
        self.streamer.end()


def _explicit_mask(args, kwargs):
    """generate drops an all-ones attention mask; without a cache (use_cache=False) transformers then reads 1-D
    position ids with gaps, which pressed positions have (kept tokens keep theirs), as packed sequences and masks
    across the gaps. An explicit all-ones mask keeps the plain causal mask."""
    positions = kwargs.get("position_ids")
    if args or positions is None or positions.dim() != 2 or kwargs.get("attention_mask") is not None:
        return None
    if kwargs.get("past_key_values") is not None:
        return None
    kwargs = dict(kwargs, attention_mask=torch.ones(positions.shape, dtype=torch.long, device=positions.device))
    return args, kwargs


def _check_generation_mode(press, model, kwargs: dict):
    config = kwargs.get("generation_config") or model.generation_config
    for name, what in _UNSUPPORTED_GENERATION.items():
        if kwargs.get(name) is not None or getattr(config, name, None) not in (None, False):
            raise ValueError(
                f"{type(press).__name__}: {what} is not supported under a press (it runs the model on token windows "
                "the press cannot map to the video); use greedy, sampling or beam search, or call generate outside the "
                "press block"
            )
    if (kwargs.get("cache_implementation") or getattr(config, "cache_implementation", None)) == "paged":
        raise ValueError(f"{type(press).__name__}: continuous batching (cache_implementation='paged') is not supported "
                         "under a press; use the default cache")


def _restore_prompt(output, original_ids: torch.Tensor, pressed_length: int):
    """Give back sequences that start with the caller's full prompt, as the unpressed model's would."""
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    repeats = sequences.shape[0] // original_ids.shape[0]  # num_return_sequences / beams
    prompt = original_ids.repeat_interleave(repeats, dim=0).to(sequences.device)
    restored = torch.cat([prompt, sequences[:, pressed_length:]], dim=1)
    if isinstance(output, torch.Tensor):
        return restored
    output.sequences = restored
    return output


@contextlib.contextmanager
def apply_press(press, model):
    """Apply `press` to every call of `model(...)` and `model.generate(...)` inside the block.

    The model's weights and class are never modified: a forward pre-hook and an instance-level `generate`
    wrapper are installed and always removed on exit, also when the block raises. Entry is all-or-nothing: if
    any step fails, what was installed is removed before the error propagates. One press per model at a time,
    used from the thread that entered the block; anything else is a clear error, never a half-pressed model.
    Yields a PressedModel whose `last_report` tells what the latest call kept.
    """
    adapter = get_adapter(model)
    with _CLAIM:
        holder = vars(model).get("_vidpress_pressed")
        if holder is not None:
            raise RuntimeError(
                f"vidpress: this model is already inside a `with {type(holder.press).__name__}(...)(model)` block"
                + ("" if holder.thread == threading.get_ident() else " of another thread")
                + f"; one press per model at a time: exit that block before applying {type(press).__name__}, or "
                "give each thread its own model"
            )
        pressed = PressedModel(press, model, adapter)
        model._vidpress_pressed = pressed
    with contextlib.ExitStack() as undo:
        undo.callback(vars(model).pop, "_vidpress_pressed", None)
        press.post_init_from_model(model)
        if press.acts_in_llm and press.retention < 1:
            pressed.pruner = press.pruner(adapter)
            undo.callback(pressed.pruner.remove)
            pressed.pruner.install()
        undo.callback(model.register_forward_pre_hook(pressed.forward_pre_hook, with_kwargs=True).remove)
        undo.callback(model.register_forward_hook(pressed.forward_hook, with_kwargs=True).remove)
        original_generate = model.generate
        previous = vars(model).get("generate")
        model.generate = functools.wraps(original_generate)(functools.partial(pressed.generate, original_generate))
        if previous is not None:
            undo.callback(setattr, model, "generate", previous)
        else:
            undo.callback(vars(model).pop, "generate", None)
        yield pressed


__all__ = ["ADAPTERS", "Adapter", "PressReport", "PressedModel", "adapter_class", "apply_press", "get_adapter",
           "register_adapter", "supported_model_types"]
