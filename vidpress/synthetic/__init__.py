"""A procedural video-QA world where token choice matters, its model-free metric (evidence recall), and a
tiny trained reference Video LLM (`vidpress.synthetic.reference`)."""

from vidpress.synthetic import long, world  # noqa: F401  (importing long registers the "long" family)
from vidpress.synthetic.world import *  # noqa: F403  (the world's public names, listed once in world.__all__)

__all__ = list(world.__all__)
