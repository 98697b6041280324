"""The `with press(model)` block: claims the model, installs the press's hooks, and always removes them.

What the block installs is a list of removable pieces: the model's forward pre-hook and forward hook, the
instance-level `generate` wrapper and `__deepcopy__`, the pressed marker, and for presses inside the LLM the
pruner's layer hooks and attention routes. Exit removes them in reverse order. A deep copy of the model made
inside the block removes the same pieces from the copy, so the copy is the model as it was before the block.
"""

from __future__ import annotations

import copy
import functools
import threading

from vidpress.models.pressed import PressedModel
from vidpress.models.registry import get_adapter

# Guards the check-and-claim of a model by a press block, so two threads cannot both claim one model.
_CLAIM = threading.Lock()


class InstanceAttribute:
    """`obj.name = value` set on the instance; `remove()` gives back what the instance held before (or nothing)."""

    def __init__(self, obj, name: str, value):
        self.obj, self.name = obj, name
        self.had_previous, self.previous = name in vars(obj), vars(obj).get(name)
        setattr(obj, name, value)

    def remove(self) -> None:
        if self.had_previous:
            setattr(self.obj, self.name, self.previous)
        else:
            vars(self.obj).pop(self.name, None)


class PressBlock:
    """The context manager `press(model)` returns; `with` yields a `PressedModel` whose `last_report` tells what
    the latest call kept.

    Inside the block every `model(...)` and `model.generate(...)` is pressed. The model's weights and class are
    never modified: hooks and instance attributes are installed and always removed on exit, also when the block
    raises. Entry is all-or-nothing: if any step fails, what was installed is removed before the error propagates.
    One press per model at a time, used from the thread that entered the block; anything else is a clear error,
    never a half-pressed model. The same block may be entered again after it exits (a new `PressedModel` each
    time); entering it while it is open is the one-press-per-model error. `copy.deepcopy(model)` inside the block
    (from any thread) gives a clean, unpressed copy, which can be pressed in its own block.
    """

    def __init__(self, press, model):
        self.press, self.model = press, model
        self._installed: list = []  # what the open block installed, in order

    def __enter__(self) -> PressedModel:
        press, model = self.press, self.model
        adapter = get_adapter(model)
        with _CLAIM:
            holder = vars(model).get("_vidpress_pressed")
            if holder is not None:
                raise RuntimeError(
                    f"vidpress: this model is already inside a `with {type(holder.press).__name__}(...)(model)` block"
                    + ("" if holder.thread == threading.get_ident() else " of another thread")
                    + f"; one press per model at a time: exit that block before applying {type(press).__name__}, "
                    "or give each thread its own model"
                )
            pressed = PressedModel(press, model, adapter)
            installed = [InstanceAttribute(model, "_vidpress_pressed", pressed)]
        try:
            press.post_init_from_model(model)
            if press.acts_in_llm and press.retention < 1:
                pressed.pruner = press.pruner(adapter)
                try:
                    installed += pressed.pruner.install()
                except BaseException:
                    pressed.pruner.remove()  # what it installed before failing
                    raise
            installed.append(model.register_forward_pre_hook(pressed.forward_pre_hook, with_kwargs=True))
            installed.append(model.register_forward_hook(pressed.forward_hook, with_kwargs=True))
            original_generate = model.generate
            wrapper = functools.wraps(original_generate)(functools.partial(pressed.generate, original_generate))
            installed.append(InstanceAttribute(model, "generate", wrapper))
            copier = functools.partial(self._copy, pressed, installed)
            installed.append(InstanceAttribute(model, "__deepcopy__", copier))
        except BaseException:
            _remove(installed)
            raise
        self._installed = installed
        return pressed

    def __exit__(self, *exc) -> bool:
        installed, self._installed = self._installed, []
        _remove(installed)
        return False

    def _copy(self, pressed: PressedModel, installed: list, memo: dict):
        """`copy.deepcopy(model)` inside the block: copy the model's state as deepcopy would, then remove every
        piece of this block from the copy (each piece is copied with the same memo, so it names the copy's
        modules and hook tables). The block's own objects are not copied: the copy only refers to them until then."""
        model = self.model
        copied = type(model).__new__(type(model))
        memo[id(model)] = copied
        for owner in (self, pressed, pressed.pruner, installed):  # referred to by what the copy drops
            if owner is not None:
                memo[id(owner)] = owner
        copied.__setstate__(copy.deepcopy(model.__getstate__(), memo))
        _remove([copy.deepcopy(piece, memo) for piece in installed])
        return copied


def _remove(installed: list) -> None:
    for piece in reversed(installed):
        piece.remove()


def apply_press(press, model) -> PressBlock:
    """`press(model)`: the block applying `press` to every call of `model(...)` and `model.generate(...)` inside it
    (see `PressBlock`)."""
    return PressBlock(press, model)
