"""`PressedModel`: what runs inside a `press(model)` block on every call of the model and of its `generate`.

A model call: the forward pre-hook presses the inputs (`Adapter.press_inputs`) and, after a pressed prefill, the
forward hook marks the cache so the caller's own decoding steps are mapped onto the pressed prompt
(`continuation.PromptMap`). A `generate` call: the instance-level wrapper presses the prompt once, runs the
model's own generate on it (the model's calls inside pass through unpressed), and gives back the caller's prompt.
The block that installs all this is `block.PressBlock`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading

from vidpress.models.base import Adapter
from vidpress.models.continuation import PromptMap
from vidpress.models.generation import PromptStreamer, check_generation_mode, explicit_mask, restore_prompt
from vidpress.models.layer_pruning import LayerPruner
from vidpress.models.report import PressReport
from vidpress.models.sequence import PIXEL_INPUTS, SEQUENCE_INPUTS

logger = logging.getLogger("vidpress")


class PressedModel:
    """Handle yielded by `with press(model) as pressed`: `pressed.last_report` describes the latest call."""

    def __init__(self, press, model, adapter: Adapter, pruner: LayerPruner | None = None):
        self.press, self.model, self.adapter, self.pruner = press, model, adapter, pruner
        self.last_report: PressReport | None = None
        self.thread = threading.get_ident()
        self._warned_no_video = False
        self._passthrough = False
        self._pending: PromptMap | None = None

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
            return explicit_mask(args, kwargs)
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
            self._pending = PromptMap(kwargs.get("input_ids"), original.shape[1], pressed)
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
        check_generation_mode(self.press, self.model, kwargs)
        cache = kwargs.get("past_key_values")
        if cache is not None and cache.get_seq_length() > 0:
            return self._continue(original, args, kwargs)
        original_ids = kwargs.get("input_ids")
        pressed = self._prepare(kwargs, for_generate=True)
        if pressed is kwargs:
            with self.passthrough():
                return original(*args, **pressed)
        if original_ids is not None and pressed.get("streamer") is not None:
            pressed["streamer"] = PromptStreamer(pressed["streamer"], original_ids)
        with self.passthrough():
            output = original(*args, **pressed)
        if original_ids is None:  # inputs_embeds only: generate returns the new tokens alone, as unpressed
            return output
        cache = getattr(output, "past_key_values", None)
        if cache is not None:  # so that generate can continue from this cache (see `_continue`)
            cache.vidpress_prompt = PromptMap(original_ids, original_ids.shape[1], pressed)
        return restore_prompt(output, original_ids, pressed["input_ids"].shape[1])

    def _continue(self, original, args, kwargs):
        """generate(...) from a cache: the caller passes its full sequence (the full prompt, as this wrapper
        returned it, plus new tokens), the cache holds the PRESSED prompt. Swap the full prompt for the pressed one
        (and its positions) so decoding continues exactly as one longer pressed call would."""
        cache = kwargs["past_key_values"]
        prompt: PromptMap | None = getattr(cache, "vidpress_prompt", None)
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
        return restore_prompt(output, prompt.original_ids, prompt.attention_mask.shape[1])
