"""How often MARC's Visual Memory Retriever finds the asked event of a synthetic long-family video.

    retrieval_recall(CLIPEmbedder.from_pretrained(CLIP_RETRIEVER_DIR), make_split("test", 240, families=("long",)))
"""

from __future__ import annotations

from math import comb

from vidpress.retrieval import VisualMemoryRetriever


def asked_hit(clips: list[tuple[int, int]], example) -> bool:
    """Whether one of `clips` [(start, end)] holds a frame where the example's asked event is visible."""
    frames = example.info["objects"][0]["frames"]
    return any(start <= f < end for start, end in clips for f in frames)


def retrieval_recall(embedder, examples, top_k: int = 3, **retriever_kwargs) -> dict:
    """Top-1 and top-`top_k` hit rate of `VisualMemoryRetriever(embedder, top_k=top_k, **retriever_kwargs)` on
    long-family examples, each video indexed from its frames and queried with its `prompt`; next to them, the
    hit rates of picking clips at random (expected values), the segmentation's clip counts, the same rates on the
    "contested" videos (segmented into more than `top_k` clips: elsewhere top-`top_k` retrieval keeps every clip),
    and frame_top1: the share of videos whose frame most similar to the question (every frame embedded) shows
    the asked event."""
    if not examples:
        raise ValueError("retrieval_recall needs at least one example")
    retriever = VisualMemoryRetriever(embedder, top_k=top_k, **retriever_kwargs)
    rows = []
    for example in examples:
        if example.family != "long":
            raise ValueError(f"retrieval_recall scores long-family examples; got family {example.family!r}")
        memory = retriever.index_video(example.video)
        clips = memory.clips
        holding = sum(asked_hit([clip], example) for clip in clips)
        k = min(top_k, len(clips))
        scores = embedder.embed_frames(example.video) @ embedder.embed_text([example.prompt])[0]
        rows.append({
            "clips": len(clips),
            "top1": asked_hit(retriever.retrieve(memory, example.prompt, k=1), example),
            "topk": asked_hit(retriever.retrieve(memory, example.prompt), example),
            "random_top1": holding / len(clips),
            "random_topk": 1 - comb(len(clips) - holding, k) / comb(len(clips), k),
            "frame_top1": int(scores.argmax()) in example.info["objects"][0]["frames"],
        })

    def mean(key, subset):
        return sum(r[key] for r in subset) / len(subset) if subset else float("nan")

    contested = [r for r in rows if r["clips"] > top_k]
    out = {"examples": len(rows), "top_k": top_k, "mean_clips": mean("clips", rows),
           "single_clip": sum(r["clips"] == 1 for r in rows), "contested": len(contested),
           "frame_top1": mean("frame_top1", rows)}
    for prefix, subset in (("", rows), ("contested_", contested)):
        for key in ("top1", "random_top1"):
            out[prefix + key] = mean(key, subset)
        for key in ("topk", "random_topk"):
            out[prefix + key.replace("topk", f"top{top_k}")] = mean(key, subset)
    return out
