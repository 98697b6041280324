"""Models and presses by name, as the command line, the bench and the lmms-eval bridge load them."""

from __future__ import annotations

from pathlib import Path

from vidpress import presses
from vidpress.files import weights_error
from vidpress.presses import PRESSES
from vidpress.types import check_retention

#: The family of the bundled random-weight demo model (`load_model(None, ...)`).
DEMO_FAMILY = "qwen2_5_vl"


def load_model(path: str | None, attn: str = "sdpa", device: str = "cpu", dtype: str = "auto"):
    """`(model.eval(), processor)` of a local model directory, or of the bundled random-weight demo model when
    `path` is None. attn: attention implementation; dtype: "auto" (the checkpoint's own), "float32", "bfloat16"
    or "float16"."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vidpress.tiny import load_tiny

    torch_dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
                   "float16": torch.float16}[dtype]
    if path is None:
        model, processor = load_tiny(DEMO_FAMILY, attn_implementation=attn)
        return model.to(device), processor
    if not Path(path).is_dir():
        raise ValueError(f"--model {path!r} is not a directory; pass a local model folder (from save_pretrained)")
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation=attn, dtype=torch_dtype)
    except SafetensorError as error:
        raise weights_error(path, error) from None
    model = model.to(device).eval()
    return model, AutoProcessor.from_pretrained(path)


def build_press(name: str, retention: float, policy=None, frame_budgets: str | None = None):
    """The press registered as `name` at `retention`; a press that needs a trained policy gets the folder `policy`
    (it loads it when applied to a model). "<name>+fca" is `name` with frame_budgets="vidcom2" (VidCom²'s per-frame
    budgets); `frame_budgets` passes that knob (the press refuses it, with its reason, where it does not apply)."""
    knobs = {"retention": check_retention(retention)}
    if name in presses.fca_variants():
        if frame_budgets not in (None, "vidcom2"):
            raise ValueError(f"--press {name} already means frame_budgets='vidcom2'; got --frame-budgets "
                             f"{frame_budgets}")
        name, frame_budgets = presses.fca_variants()[name], "vidcom2"
    if frame_budgets is not None:
        knobs["frame_budgets"] = frame_budgets
    press_class = PRESSES.get(name)
    needs_policy = press_class is not None and press_class.needs_policy
    if policy is not None and not needs_policy:
        learned = ", ".join(n for n in presses.available() if PRESSES[n].needs_policy)
        raise ValueError(f"--policy is for presses with a trained policy ({learned}); got --press {name}")
    if needs_policy:
        if policy is None:
            raise ValueError(f"--press {name} needs a trained policy: pass --policy DIR (a folder written by the "
                             "press's trainer; see `vidpress train --help`)")
        knobs["policy"] = policy  # the press checks the folder
    return presses.get(name, **knobs)
