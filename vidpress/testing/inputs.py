"""`make_inputs`: the tests' shorthand for `vidpress.inputs.build_inputs` (one question, or a batch)."""

from __future__ import annotations

from vidpress.inputs import build_inputs


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


def make_inputs(processor, videos: list, question: str | list[str] = "What happens?", images: list | None = None,
                padding_side: str = "left", fps: float = 2.0):
    """Model inputs for one prompt, or a batch (`vidpress.inputs.build_inputs`).

    `videos` holds uint8 [T, H, W, 3] arrays. With a single `question` every video (and image) goes into that
    one prompt, images first; with a list of questions, entry i of `videos` / `images` (an array, a list of
    arrays, or None) belongs to sample i, and prompts are padded on `padding_side`. Frames are used as given and
    described as sampled at `fps`. Returns the processor's BatchFeature.
    """
    batched = not isinstance(question, str)
    questions = list(question) if batched else [question]
    return build_inputs(processor, questions, _per_sample(videos, len(questions), batched),
                        _per_sample(images, len(questions), batched), fps=fps, padding_side=padding_side)
