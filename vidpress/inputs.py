"""Video + question -> model inputs: the one place where prompts meet the processor.

Every front end builds its inputs here: the chat template with the visual entries and the question (an optional
system turn before it, an optional answer prefix after the opened assistant turn), then one processor call with
the frames used as given (`do_sample_frames=False`) and their `VideoMetadata`. Inputs built from cached encoder
features (no pixels) use `placeholder_text` and `left_pad` for the same token ids.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import transformers
from transformers.video_utils import VideoMetadata

if TYPE_CHECKING:
    from vidpress.video import DecodedVideo


def chat_text(processor, question: str, *, videos: int = 1, images: int = 0, system: str | None = None,
              answer_prefix: str = "") -> str:
    """The chat template's text for one user turn (`images` image entries, then `videos` video entries, then the
    question), after an optional system turn, with the assistant turn opened and `answer_prefix` written into it."""
    messages = []
    if system:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    content = [{"type": "image"}] * images + [{"type": "video"}] * videos + [{"type": "text", "text": question}]
    messages.append({"role": "user", "content": content})
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + answer_prefix


def frames_metadata(frames, fps: float = 2.0, frame_indices=None, total_frames: int | None = None) -> VideoMetadata:
    """`VideoMetadata` of pre-sampled frames uint8 [T, H, W, 3] taken at `frame_indices` (default 0..T-1) of a video
    of `total_frames` frames (default T) at `fps` (Qwen models place the frames in time from it)."""
    total = len(frames) if total_frames is None else total_frames
    indices = range(len(frames)) if frame_indices is None else frame_indices
    return VideoMetadata(total_num_frames=total, fps=fps, height=int(frames.shape[1]), width=int(frames.shape[2]),
                         duration=total / fps, frames_indices=[int(i) for i in indices])


# LLaVA processors return pixel_values_videos as one [N, T, C, H, W] tensor (Qwen ones flatten patches).
_STACKED_VIDEO_PROCESSORS = (transformers.LlavaOnevisionProcessor, transformers.LlavaNextVideoProcessor)


def build_inputs(processor, questions: list[str], videos: list[list] | None = None, images: list[list] | None = None, *,
                 metadata: list[list[VideoMetadata]] | None = None, fps: float = 2.0, system: str | None = None,
                 answer_prefix: str = "", padding_side: str = "left"):
    """Processor inputs for a batch of prompts, one per question (see `chat_text`), padded on `padding_side`.

    videos / images: per prompt, a list of uint8 [T, H, W, 3] videos / [H, W, 3] images (None: none); a prompt
    holds its images first. metadata: per prompt, one VideoMetadata per video (default: `frames_metadata(video,
    fps)`). Returns the processor's BatchFeature: input_ids / attention_mask [B, L] plus pixel values and grids.
    """
    videos = videos if videos is not None else [[] for _ in questions]
    images = images if images is not None else [[] for _ in questions]
    if not len(questions) == len(videos) == len(images):
        raise ValueError(f"got {len(videos)} video and {len(images)} image entries for {len(questions)} questions")
    prompts = [chat_text(processor, q, videos=len(v), images=len(i), system=system, answer_prefix=answer_prefix)
               for q, v, i in zip(questions, videos, images)]
    flat_videos = [np.asarray(v) for entry in videos for v in entry]
    flat_images = [i for entry in images for i in entry]
    if isinstance(processor, _STACKED_VIDEO_PROCESSORS) and len({len(v) for v in flat_videos}) > 1:
        raise ValueError(f"{type(processor).__name__} stacks all videos of a call into one [N, T, C, H, W] tensor, so "
                         f"they need the same frame count; got {[len(v) for v in flat_videos]}")
    kwargs = {}
    if flat_videos:
        flat_metadata = [m for entry in metadata for m in entry] if metadata is not None else [
            frames_metadata(v, fps) for v in flat_videos]
        kwargs.update(videos=flat_videos, do_sample_frames=False, video_metadata=flat_metadata)
    if flat_images:
        kwargs["images"] = flat_images
    return processor(text=prompts, return_tensors="pt", padding=True, padding_side=padding_side, **kwargs)


def video_inputs(processor, video: DecodedVideo, question: str, *, system: str | None = None, answer_prefix: str = ""):
    """`build_inputs` for one question about one decoded video (frames used as sampled, its own metadata)."""
    return build_inputs(processor, [question], [[video.frames]], metadata=[[video.metadata()]], system=system,
                        answer_prefix=answer_prefix)


def pad_frames(frames, frame_indices, model):
    """Repeat the last frame until the video has the model's temporal patch size (Qwen3-VL's processor refuses a
    shorter one; Qwen2/2.5-VL pad the same way themselves). frames uint8 [T, H, W, 3]; returns (frames,
    frame_indices)."""
    need = int(getattr(model.config.vision_config, "temporal_patch_size", 1) or 1)
    if len(frames) >= need:
        return frames, frame_indices
    extra = need - len(frames)
    frames = torch.cat([torch.as_tensor(frames), torch.as_tensor(frames[-1:]).repeat(extra, 1, 1, 1)]).numpy()
    return frames, [*frame_indices, *[frame_indices[-1]] * extra]


def placeholder_text(processor, question: str, num_video_tokens: int) -> str:
    """`chat_text` of one video and `question` with the video placeholder repeated `num_video_tokens` times, as the
    processor expands it: the prompt of a video given as encoder features instead of pixels."""
    token = processor.video_token
    return chat_text(processor, question).replace(token, token * num_video_tokens)


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows -> (input_ids, attention_mask) LongTensors [B, L], left-padded with `pad_id`."""
    length = max(map(len, rows))
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, length - len(row) :] = torch.tensor(row)
        attention_mask[i, length - len(row) :] = 1
    return input_ids, attention_mask
