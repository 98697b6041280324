"""Make torchvision importable on machines where its compiled ops cannot load, whatever is imported first.

The torchvision wheel that matches a pinned CPU torch may be a CUDA build whose `_C` extension fails to load;
torchvision then dies at import registering fake kernels for `torchvision::nms`, and with it every transformers
image/video processor and the Qwen-VL model classes. Defining the two op schemas first lets the pure-Python parts
(the transforms the processors use) import.

`vidpress_torchvision.pth` (installed into site-packages with vidpress) calls `install()` at interpreter start. It
only puts a finder on `sys.meta_path`; nothing is imported until something imports torchvision, and then the fix
runs once, before torchvision's own code. Where the extension loads, the fix is that load and nothing else.
This module uses the standard library only, so interpreter start stays as fast as without it. Set
VIDPRESS_NO_TORCHVISION_FIX=1 to turn the start-up hook off.
"""

import glob
import importlib.util
import os
import sys

_fallback_library = None  # keeps the schema definitions alive for the process


def ensure_torchvision_importable() -> None:
    """Load torchvision's compiled ops, or where they cannot load define the schemas torchvision's import needs."""
    global _fallback_library
    spec = importlib.util.find_spec("torchvision")
    if spec is None or _fallback_library is not None or not spec.submodule_search_locations:
        return
    import torch

    extensions = glob.glob(os.path.join(spec.submodule_search_locations[0], "_C*.so"))
    try:
        if extensions:
            torch.ops.load_library(extensions[0])
            return
    except OSError:
        pass
    if hasattr(torch.ops.torchvision, "nms"):
        return
    _fallback_library = torch.library.Library("torchvision", "FRAGMENT")
    _fallback_library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _fallback_library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


class _BeforeTorchvision:
    """A meta path finder that runs the fix when `torchvision` is first imported, then steps aside for good."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            uninstall()
            ensure_torchvision_importable()
        return None  # the regular finders import torchvision itself


def install() -> None:
    """Run the fix just before torchvision's first import (at once if torchvision is already imported)."""
    if os.environ.get("VIDPRESS_NO_TORCHVISION_FIX"):
        return
    if any(isinstance(finder, _BeforeTorchvision) for finder in sys.meta_path):
        return
    if "torchvision" in sys.modules:
        return
    sys.meta_path.insert(0, _BeforeTorchvision())


def uninstall() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _BeforeTorchvision)]
