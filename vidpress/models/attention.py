"""Routing one attention module through a vidpress function that runs next to the model's own attention.

Presses that need attention probabilities (FastV/PDrop in the LLM, VisionZip in the vision encoder) register an
AttentionInterface function (transformers' public extension point) and point ONE attention module at it by giving
that module a copy of its config naming the function. The function calls the model's own implementation (eager,
SDPA, flash, ...) and records what the press needs; nothing in transformers is patched, and `remove` restores the
module's own config object.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


def own_attention(module: torch.nn.Module, implementation: str) -> Callable:
    """The attention function the model would call for `implementation` (its own eager function as fallback)."""
    eager = sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager)


class AttentionRoute:
    """While installed, `module` runs through the registered function `name`, which finds `owner` as
    `module._vidpress_owner`. `implementation` is what the module ran before: the function should call it."""

    def __init__(self, module: torch.nn.Module, name: str, owner):
        self.module, self.name, self.owner = module, name, owner
        self.implementation = module.config._attn_implementation

    def install(self) -> None:
        if hasattr(self.module, "_vidpress_owner"):
            raise RuntimeError("vidpress: this attention module is already routed through another vidpress function")
        self._config = self.module.config
        config = copy.copy(self._config)
        config._attn_implementation_internal = self.name
        self.module.config = config
        self.module._vidpress_owner = self.owner

    def remove(self) -> None:
        self.module.config = self._config
        del self.module._vidpress_owner
