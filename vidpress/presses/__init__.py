"""The press registry: `get("vidcom2", retention=0.25)` builds a press by name; `available()` lists the names.

Each press registers itself with `@register("name")` in its own file; the one import line per press below is what
loads it. A new press: one new file and one line here.
"""

from __future__ import annotations

from vidpress.presses.base import PRESSES, LayerPress, Press, ScorePress, register
from vidpress.presses.cacovid import CaCoVIDPolicy, CaCoVIDPress
from vidpress.presses.divprune import DivPrunePress
from vidpress.presses.dycoke import DyCokePress
from vidpress.presses.fastv import FastVPress
from vidpress.presses.fastvid import FastVIDPress
from vidpress.presses.flashvid import FlashVIDPress
from vidpress.presses.holitom import HoliTomPress
from vidpress.presses.marc import MarcPress
from vidpress.presses.pdrop import PDropPress
from vidpress.presses.planned import PlannedPress  # a tool for training loops, not registered
from vidpress.presses.random import RandomPress
from vidpress.presses.uniform import UniformPress
from vidpress.presses.vidcom2 import VidCom2Press
from vidpress.presses.visionzip import VisionZipPress


def available() -> list[str]:
    """Names of the registered presses."""
    return sorted(PRESSES)


def get(name: str, **knobs) -> Press:
    """Build the press registered as `name` with its knobs, e.g. get("vidcom2", retention=0.25)."""
    key = name.strip().lower().replace("²", "2").replace("-", "_")
    if key not in PRESSES:
        raise ValueError(f"unknown press {name!r}; available presses: {', '.join(available())}")
    return PRESSES[key](**knobs)


__all__ = ["PRESSES", "CaCoVIDPolicy", "CaCoVIDPress", "DivPrunePress", "DyCokePress", "FastVIDPress", "FastVPress",
           "FlashVIDPress", "HoliTomPress", "LayerPress", "MarcPress", "PDropPress", "PlannedPress", "Press",
           "RandomPress", "ScorePress", "UniformPress", "VidCom2Press", "VisionZipPress", "available", "get",
           "register"]
