"""Model adapters, one per family, picked by `config.model_type`, and `apply_press`, the context manager
behind `press(model)`."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging

import torch

from vidpress.models.base import Adapter, PressReport
from vidpress.models.layer_pruning import LayerPruner
from vidpress.models.llava import LlavaNextVideoAdapter, LlavaOnevisionAdapter
from vidpress.models.qwen2_vl import Qwen2VLAdapter, Qwen3VLAdapter

logger = logging.getLogger("vidpress")

ADAPTERS: list[type[Adapter]] = [Qwen2VLAdapter, Qwen3VLAdapter, LlavaOnevisionAdapter, LlavaNextVideoAdapter]


def supported_model_types() -> list[str]:
    return [t for adapter in ADAPTERS for t in adapter.model_types]


def get_adapter(model) -> Adapter:
    """The adapter for `model`'s family; a clear error for anything else."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            if not hasattr(model, "model") or not hasattr(model, "generate"):
                raise ValueError(
                    f"pass the *ForConditionalGeneration model of {adapter.family} (got {type(model).__name__})"
                )
            return adapter(model)
    families = ", ".join(f"{a.family} ({'/'.join(a.model_types)})" for a in ADAPTERS)
    raise ValueError(f"unsupported model type {model_type!r} ({type(model).__name__}); supported families: {families}")


class PressedModel:
    """Handle yielded by `with press(model) as pressed`: `pressed.last_report` describes the latest call."""

    def __init__(self, press, model, adapter: Adapter, pruner: LayerPruner | None = None):
        self.press, self.model, self.adapter, self.pruner = press, model, adapter, pruner
        self.last_report: PressReport | None = None
        self._warned_no_video = False
        self._passthrough = False

    def prepare(self, inputs: dict, for_generate: bool = False) -> dict:
        """Press `inputs` now and return the model kwargs; call the model on them inside `passthrough()`.

        Lets callers time the press step apart from the LLM; `model(**inputs)` does both in one go.
        """
        return self._prepare(dict(inputs), for_generate)

    @contextlib.contextmanager
    def passthrough(self):
        """Inside this block the model's calls are not pressed again (their inputs already were)."""
        previous, self._passthrough = self._passthrough, True
        try:
            yield
        finally:
            self._passthrough = previous

    def _prepare(self, kwargs: dict, for_generate: bool) -> dict:
        if not self.adapter.has_video(kwargs):
            if not self._warned_no_video:
                logger.warning("%s: no video in the inputs; the press does nothing for such calls", type(self.press).__name__)
                self._warned_no_video = True
            self.last_report = PressReport()
            if self.pruner is not None:
                self.pruner.report = None
            return kwargs
        kwargs, self.last_report = self.adapter.compress(self.press, kwargs, for_generate)
        if self.pruner is not None:
            self.pruner.begin(kwargs["input_ids"], kwargs.get("attention_mask"), self.last_report)
        return kwargs

    def forward_pre_hook(self, module, args, kwargs):
        if self._passthrough:  # the inputs were pressed already (generate, prepare)
            return None
        kwargs = dict(inspect.signature(self.model.forward).bind_partial(*args, **kwargs).arguments)
        kwargs.update(kwargs.pop("kwargs", {}))
        cache = kwargs.get("past_key_values")
        if cache is not None and cache.get_seq_length() > 0:  # a decoding step of the caller's own loop
            return None
        return (), self._prepare(kwargs, for_generate=False)

    def generate(self, original, *args, **kwargs):
        if args:  # generate(input_ids, ...) positional form
            kwargs["input_ids"] = args[0]
            args = args[1:]
        if "inputs" in kwargs and kwargs.get("input_ids") is None:  # generate(inputs=input_ids, ...)
            kwargs["input_ids"] = kwargs.pop("inputs")
        original_ids = kwargs.get("input_ids")
        pressed = self._prepare(kwargs, for_generate=True)
        with self.passthrough():
            output = original(*args, **pressed)
        if pressed is kwargs or original_ids is None:
            return output
        return _restore_prompt(output, original_ids, pressed["input_ids"].shape[1])


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
    wrapper are installed and always removed on exit, also when the block raises.
    Yields a PressedModel whose `last_report` tells what the latest call kept.
    """
    adapter = get_adapter(model)
    pruner = LayerPruner(press, adapter) if getattr(press, "acts_in_llm", False) and press.retention < 1 else None
    pressed = PressedModel(press, model, adapter, pruner)
    original_generate = model.generate
    had_instance_generate = "generate" in vars(model)
    handle = model.register_forward_pre_hook(pressed.forward_pre_hook, with_kwargs=True)
    model.generate = functools.wraps(original_generate)(functools.partial(pressed.generate, original_generate))
    if pruner is not None:
        pruner.install()
    try:
        yield pressed
    finally:
        if pruner is not None:
            pruner.remove()
        handle.remove()
        if had_instance_generate:
            model.generate = original_generate
        else:
            del model.generate


__all__ = ["ADAPTERS", "Adapter", "PressReport", "PressedModel", "apply_press", "get_adapter", "supported_model_types"]
