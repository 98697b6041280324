"""A procedural video-QA world where token choice matters, its model-free metric (evidence recall), and a
tiny trained reference Video LLM (`vidpress.synthetic.reference`)."""

from vidpress.synthetic.world import (
    COLOUR_NAMES,
    COLOURS,
    FLASH_SHAPES,
    QUADRANTS,
    QUESTION_FAMILIES,
    Example,
    WorldConfig,
    evidence_hits,
    evidence_recall,
    make_example,
    make_split,
)

__all__ = [
    "COLOUR_NAMES",
    "COLOURS",
    "FLASH_SHAPES",
    "QUADRANTS",
    "QUESTION_FAMILIES",
    "Example",
    "WorldConfig",
    "evidence_hits",
    "evidence_recall",
    "make_example",
    "make_split",
]
