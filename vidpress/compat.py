"""Make torchvision importable on machines where its compiled ops cannot load.

The fix lives in the top-level module `_vidpress_torchvision` so that `vidpress_torchvision.pth` can apply it at
interpreter start without importing vidpress (or torch); `import vidpress` applies it too, for installs where
the `.pth` file is not active (e.g. the source tree on `PYTHONPATH`). Nothing is done where the ops load.
"""

from _vidpress_torchvision import ensure_torchvision_importable

__all__ = ["ensure_torchvision_importable"]
