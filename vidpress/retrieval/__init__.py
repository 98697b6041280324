"""MARC's Visual Memory Retriever: event segmentation, clip/question embedders, the clip index, retrieval."""

from vidpress.retrieval.embedders import CLIPEmbedder, Embedder, VLMEmbedder
from vidpress.retrieval.events import (
    FrameDescriptor,
    SimilarityDropDetector,
    clips_from_boundaries,
    describe_video,
    detect_events,
    segment,
)
from vidpress.retrieval.index import ClipIndex
from vidpress.retrieval.retriever import VideoMemory, VisualMemoryRetriever, clip_groups

__all__ = [
    "CLIPEmbedder",
    "ClipIndex",
    "Embedder",
    "FrameDescriptor",
    "SimilarityDropDetector",
    "VLMEmbedder",
    "VideoMemory",
    "VisualMemoryRetriever",
    "clip_groups",
    "clips_from_boundaries",
    "describe_video",
    "detect_events",
    "segment",
]
