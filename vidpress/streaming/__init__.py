"""Streaming video: answer questions about a live video from one KV cache with a bounded visual memory."""

from vidpress.streaming.memory import POLICIES, MemoryPolicy, MemoryView, register_policy
from vidpress.streaming.stream import VideoStream

__all__ = ["POLICIES", "MemoryPolicy", "MemoryView", "VideoStream", "register_policy"]
