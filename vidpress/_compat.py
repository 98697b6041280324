"""Make torchvision importable on machines where its compiled ops cannot load.

The torchvision wheel that matches a pinned CPU torch may be a CUDA build whose `_C` extension fails to load;
torchvision then dies at import registering fake kernels for `torchvision::nms`, and with it every
transformers image/video processor. Defining the two op schemas first lets the pure-Python parts (transforms
used by the processors) import. Nothing is done when the extension loads normally.
"""

import glob
import importlib.util
import os

import torch

_fallback_library = None  # keeps the schema definitions alive for the process


def ensure_torchvision_importable() -> None:
    global _fallback_library
    spec = importlib.util.find_spec("torchvision")
    if spec is None or _fallback_library is not None or not spec.submodule_search_locations:
        return
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
