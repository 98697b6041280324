"""`make_inputs`: model inputs for videos (and images) and one question or a batch, via the chat template."""

from __future__ import annotations

import numpy as np
import transformers
from transformers.video_utils import VideoMetadata


def _as_list(item) -> list:
    """An array (one video / image), a list of arrays, or None -> list of arrays."""
    if item is None:
        return []
    return [item] if hasattr(item, "ndim") else list(item)


def _per_sample(items, batch: int, batched: bool) -> list[list]:
    """Normalise `videos` / `images` to one list of arrays per sample."""
    if not batched:
        return [[x for entry in _as_list(items) for x in _as_list(entry)]]
    if items is None:
        return [[] for _ in range(batch)]
    if len(items) != batch:
        raise ValueError(f"got {len(items)} video/image entries for a batch of {batch} questions")
    return [_as_list(entry) for entry in items]


# LLaVA processors return pixel_values_videos as one [N, T, C, H, W] tensor (Qwen ones flatten patches).
_STACKED_VIDEO_PROCESSORS = (transformers.LlavaOnevisionProcessor, transformers.LlavaNextVideoProcessor)


def make_inputs(
    processor,
    videos: list,
    question: str | list[str] = "What happens?",
    images: list | None = None,
    padding_side: str = "left",
    fps: float = 2.0,
):
    """Model inputs for one prompt, or a batch, built from the processor's chat template.

    `videos` holds uint8 [T, H, W, 3] arrays. With a single `question` every video (and image) goes into that
    one prompt, images first; with a list of questions, entry i of `videos` / `images` (an array, a list of
    arrays, or None) belongs to sample i, and prompts are padded on `padding_side`. Frames are used as given
    (`do_sample_frames=False`) and described as sampled at `fps` (Qwen2.5-VL derives temporal positions and
    Qwen3-VL frame timestamps from it). LLaVA processors stack videos, so all videos of one call must have the
    same frame count there (ValueError otherwise).
    Returns the processor's BatchFeature: `input_ids` / `attention_mask` [B, L] plus pixel values and grids.
    """
    batched = not isinstance(question, str)
    questions = list(question) if batched else [question]
    sample_videos = _per_sample(videos, len(questions), batched)
    sample_images = _per_sample(images, len(questions), batched)
    prompts = []
    for q, vids, imgs in zip(questions, sample_videos, sample_images):
        content = [{"type": "image"} for _ in imgs] + [{"type": "video"} for _ in vids] + [{"type": "text", "text": q}]
        message = [{"role": "user", "content": content}]
        prompts.append(processor.apply_chat_template(message, add_generation_prompt=True, tokenize=False))
    flat_videos = [np.asarray(v) for vids in sample_videos for v in vids]
    flat_images = [np.asarray(i) for imgs in sample_images for i in imgs]
    if isinstance(processor, _STACKED_VIDEO_PROCESSORS) and len({len(v) for v in flat_videos}) > 1:
        raise ValueError(
            f"{type(processor).__name__} stacks all videos of a call into one [N, T, C, H, W] tensor, so they "
            f"need the same frame count; got {[len(v) for v in flat_videos]}"
        )
    kwargs = {}
    if flat_videos:
        kwargs.update(
            videos=flat_videos,
            do_sample_frames=False,
            video_metadata=[
                VideoMetadata(
                    total_num_frames=len(v),
                    fps=fps,
                    height=v.shape[1],
                    width=v.shape[2],
                    duration=len(v) / fps,
                    frames_indices=list(range(len(v))),
                )
                for v in flat_videos
            ],
        )
    if flat_images:
        kwargs["images"] = flat_images
    return processor(text=prompts, return_tensors="pt", padding=True, padding_side=padding_side, **kwargs)
