"""Model adapters, one per family, picked by `config.model_type`, and `apply_press`, the block behind
`press(model)`.

registry.py: the adapters by model type; base.py: the Adapter (family hooks and the steps of a pressed call);
sequence.py: per-token inputs cut and re-padded; query.py: the question a query-aware press reads; report.py:
PressReport; block.py: the `with press(model)` block; pressed.py: what runs on each call inside it;
generation.py / continuation.py: generate under a press and decoding from a pressed cache; layer_pruning.py,
vision_stats.py, attention.py: attention recorded next to the model's own (presses inside the LLM, VisionZip).
"""

from __future__ import annotations

# One import line per adapter file: importing it registers its families (`@register_adapter`). The order is the
# order error messages list the families in.
# isort: off
from vidpress.models import qwen2_vl  # noqa: F401
from vidpress.models import llava  # noqa: F401
# isort: on
from vidpress.models.base import Adapter
from vidpress.models.block import PressBlock, apply_press
from vidpress.models.pressed import PressedModel
from vidpress.models.registry import ADAPTERS, adapter_class, get_adapter, register_adapter
from vidpress.models.report import PressReport

__all__ = ["ADAPTERS", "Adapter", "PressBlock", "PressReport", "PressedModel", "adapter_class", "apply_press",
           "get_adapter", "register_adapter"]
