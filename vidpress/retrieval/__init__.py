"""MARC's Visual Memory Retriever: event segmentation, clip/question embedders, the clip index, retrieval."""

from vidpress.retrieval.events import SimilarityDropDetector, clips_from_boundaries, segment

__all__ = ["SimilarityDropDetector", "clips_from_boundaries", "segment"]
