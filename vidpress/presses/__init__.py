"""The press registry: `get("vidcom2", retention=0.25)` builds a press by name; `available()` lists the names.

Each press registers itself with `@register("name")` in its own file; the one import line per press below is what
loads it. A new press: one new file and one line here.
"""

from __future__ import annotations

from vidpress.presses.base import PRESSES, LayerPress, Press, ScorePress, register
from vidpress.presses.cacovid import CaCoVIDPolicy, CaCoVIDPress
from vidpress.presses.divprune import DivPrunePress
from vidpress.presses.downsample import DownsamplePress
from vidpress.presses.dycoke import DyCokePress
from vidpress.presses.evs import EVSPress
from vidpress.presses.fastv import FastVPress
from vidpress.presses.fastvid import FastVIDPress
from vidpress.presses.flashvid import FlashVIDPress
from vidpress.presses.holitom import HoliTomPress
from vidpress.presses.marc import MarcPress
from vidpress.presses.pdrop import PDropPress
from vidpress.presses.planned import PlannedPress  # a tool for training loops, not registered
from vidpress.presses.random import RandomPress
from vidpress.presses.sparsevlm import SparseVLMPress
from vidpress.presses.stc import STCPress
from vidpress.presses.uniform import UniformPress
from vidpress.presses.vidcom2 import VidCom2Press
from vidpress.presses.visionzip import VisionZipPress


def available() -> list[str]:
    """Names of the registered presses."""
    return sorted(PRESSES)


def press_key(name: str) -> str:
    """The registry key a user's press name stands for: case, surrounding spaces, "-" for "_" and "²" for "2" do
    not matter ("VidCom²" -> "vidcom2")."""
    return name.strip().lower().replace("²", "2").replace("-", "_")


#: A press name followed by this ("fastv+fca") is that press with VidCom²'s frame budgets, frame_budgets="vidcom2".
FCA_SUFFIX = "+fca"


def fca_variants() -> dict[str, str]:
    """{"<name>+fca": name} for every registered press that takes VidCom²'s frame budgets (`supports_frame_budgets`)."""
    return {name + FCA_SUFFIX: name for name in available() if PRESSES[name].supports_frame_budgets}


def get(name: str, **knobs) -> Press:
    """Build the press registered as `name` (see `press_key`) with its knobs, e.g. get("vidcom2", retention=0.25)."""
    key = press_key(name)
    if key not in PRESSES:
        raise ValueError(f"unknown press {name!r}; available presses: {', '.join(available())}")
    return PRESSES[key](**knobs)


__all__ = ["FCA_SUFFIX", "PRESSES", "CaCoVIDPolicy", "CaCoVIDPress", "DivPrunePress", "DownsamplePress", "DyCokePress",
           "EVSPress", "FastVIDPress", "FastVPress", "FlashVIDPress", "HoliTomPress", "LayerPress", "MarcPress",
           "PDropPress", "PlannedPress", "Press", "RandomPress", "STCPress", "ScorePress", "SparseVLMPress",
           "UniformPress", "VidCom2Press", "VisionZipPress", "available", "fca_variants", "get", "press_key",
           "register"]
