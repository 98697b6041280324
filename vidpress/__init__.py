"""vidpress: visual-token compression ("presses") for Hugging Face Video LLMs.

    from vidpress import VidCom2Press
    with VidCom2Press(retention=0.25)(model):
        out = model.generate(**inputs, max_new_tokens=32)
"""

from vidpress.compat import ensure_torchvision_importable

ensure_torchvision_importable()

from vidpress import presses  # noqa: E402
from vidpress.presses import (  # noqa: E402
    CaCoVIDPolicy,
    CaCoVIDPress,
    DivPrunePress,
    DyCokePress,
    FastVIDPress,
    FastVPress,
    LayerPress,
    MarcPress,
    PDropPress,
    Press,
    RandomPress,
    ScorePress,
    UniformPress,
    VidCom2Press,
    VisionZipPress,
)
from vidpress.types import Query, Selection, VideoTokens  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "CaCoVIDPolicy", "CaCoVIDPress", "DivPrunePress", "DyCokePress", "FastVIDPress", "FastVPress", "LayerPress",
    "MarcPress", "PDropPress", "Press", "Query", "RandomPress", "ScorePress", "Selection", "UniformPress",
    "VidCom2Press", "VideoTokens", "VisionZipPress", "presses",
]
