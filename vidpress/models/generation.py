"""What a pressed `generate` needs beyond the pressed prefill: the modes it refuses, the caller's prompt in the
returned sequences and in a streamer, and an explicit mask where generate would read pressed positions as packed."""

from __future__ import annotations

import torch

# Generation features that bypass or duplicate the model's own forward in ways a press cannot follow.
UNSUPPORTED_GENERATION = {
    "assistant_model": "assisted decoding (assistant_model)",
    "prompt_lookup_num_tokens": "prompt-lookup decoding (prompt_lookup_num_tokens)",
    "assistant_early_exit": "self-speculative decoding (assistant_early_exit)",
    "use_mtp": "multi-token-prediction decoding (use_mtp)",
    "custom_generate": "custom_generate",
}


def check_generation_mode(press, model, kwargs: dict) -> None:
    """A ValueError for a generate call (its kwargs, or the model's generation config) in a mode a press cannot
    follow: assisted / prompt-lookup / self-speculative / multi-token decoding, custom_generate, a paged cache."""
    config = kwargs.get("generation_config") or model.generation_config
    for name, what in UNSUPPORTED_GENERATION.items():
        if kwargs.get(name) is not None or getattr(config, name, None) not in (None, False):
            raise ValueError(
                f"{type(press).__name__}: {what} is not supported under a press (it runs the model on token windows "
                "the press cannot map to the video); use greedy, sampling or beam search, or call generate outside the "
                "press block"
            )
    if (kwargs.get("cache_implementation") or getattr(config, "cache_implementation", None)) == "paged":
        raise ValueError(f"{type(press).__name__}: continuous batching (cache_implementation='paged') is not supported "
                         "under a press; use the default cache")


def explicit_mask(args, kwargs):
    """generate drops an all-ones attention mask; without a cache (use_cache=False) transformers then reads 1-D
    position ids with gaps, which pressed positions have (kept tokens keep theirs), as packed sequences and masks
    across the gaps. An explicit all-ones mask keeps the plain causal mask. A forward pre-hook's return value."""
    positions = kwargs.get("position_ids")
    if args or positions is None or positions.dim() != 2 or kwargs.get("attention_mask") is not None:
        return None
    if kwargs.get("past_key_values") is not None:
        return None
    kwargs = dict(kwargs, attention_mask=torch.ones(positions.shape, dtype=torch.long, device=positions.device))
    return args, kwargs


def restore_prompt(output, original_ids: torch.Tensor, pressed_length: int):
    """Give back sequences that start with the caller's full prompt, as the unpressed model's would."""
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    repeats = sequences.shape[0] // original_ids.shape[0]  # num_return_sequences / beams
    prompt = original_ids.repeat_interleave(repeats, dim=0).to(sequences.device)
    restored = torch.cat([prompt, sequences[:, pressed_length:]], dim=1)
    if isinstance(output, torch.Tensor):
        return restored
    output.sequences = restored
    return output


class PromptStreamer:
    """Hands a streamer the caller's full prompt in place of the pressed one (generate's first `put`)."""

    def __init__(self, streamer, prompt: torch.Tensor):
        self.streamer, self.prompt = streamer, prompt

    def put(self, value):
        if self.prompt is not None:
            value, self.prompt = self.prompt.cpu(), None
        self.streamer.put(value)

    def end(self):
        self.streamer.end()
