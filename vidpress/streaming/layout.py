"""How a stream lays out its tokens: the prompt around the video, each chunk's token ids and its positions.

A stream is the offline prompt of one video whose video part grows: `prefix` (the chat template up to the video
placeholder), then every chunk as the family's processor expands it, then, for a question, `suffix` (the template
after the placeholder with the question written in). Positions follow the model's own numbering of that offline
sequence (transformers 5.23 `get_rope_index` / 1-D counting), so that streaming a clip in chunks numbers every token
as the offline call on the whole clip does:

- "time" (Qwen2-VL, Qwen2.5-VL: one 3-D M-RoPE block per video): every chunk shares the video's origin P0 (the
  first video position); a temporal group's t id is P0 + int(seconds since the stream's first frame *
  tokens_per_second) (Qwen2.5-VL) or P0 + its group count (Qwen2-VL, no time scaling); h / w ids are P0 + row /
  column. Text after the video starts at P0 + max(h, w), the model's rule.
- "shift" (Qwen3-VL: timestamps written as text before each group; LLaVA families: 1-D positions): a chunk's
  positions are the model's numbering of the chunk alone, shifted by where the stream stands.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vidpress.inputs import chat_text

# Stands in for the question while the chat template is rendered; never a real question's text.
_QUESTION = "\x00vidpress-question\x00"


@dataclass
class StreamTemplate:
    """The chat template split around the video: prefix ids [P], and the text after the video with a slot for the
    question."""

    prefix_ids: torch.Tensor
    suffix_text: str
    tokenizer: object

    @classmethod
    def from_processor(cls, processor, system: str | None = None) -> StreamTemplate:
        prompt = chat_text(processor, _QUESTION, system=system)
        video_token = processor.video_token
        if prompt.count(video_token) != 1:
            raise ValueError(f"the chat template writes {prompt.count(video_token)} video placeholders "
                             f"({video_token!r}) for one video; a stream needs exactly one")
        before, after = prompt.split(video_token)
        tokenizer = processor.tokenizer
        prefix = tokenizer(before, return_tensors="pt")["input_ids"][0]  # the tokenizer's own BOS, where it has one
        return cls(prefix, after, tokenizer)

    def question_ids(self, question: str) -> torch.Tensor:
        """[Q] ids of the text after the video with `question` written in (template tags included)."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"a question must be a non-empty string; got {question!r}")
        text = self.suffix_text.replace(_QUESTION, question)
        return self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]


class PositionLayout:
    """Positions of a stream's tokens: `rows` position rows (3 for M-RoPE, 1 for 1-D), `next_text` the position of
    the next text token (a question), advanced by every chunk (see the module docstring)."""

    def __init__(self, adapter, prefix_length: int):
        self.adapter = adapter
        self.base = adapter.base
        config = adapter.config
        self.rows = 3 if adapter.mrope else 1
        # Qwen2-VL / Qwen2.5-VL number all of a video's frames from one origin; Qwen3-VL writes timestamps as text.
        self.mode = "time" if adapter.mrope and not adapter.deepstack else "shift"
        self.origin = prefix_length  # P0: the first video position ("time")
        self.next_text = prefix_length
        self.tokens_per_second = getattr(config.vision_config, "tokens_per_second", None)
        self.merge = getattr(config.vision_config, "spatial_merge_size", 1)
        self.groups = 0  # temporal groups seen ("time", Qwen2-VL)
        self.spatial: tuple[int, int] | None = None

    def prefix(self, length: int) -> torch.Tensor:
        """[R, P] positions of the prefix: 0..P-1 on every row."""
        return torch.arange(length).expand(self.rows, -1).clone()

    def chunk(self, inputs: dict, group_seconds: torch.Tensor) -> torch.Tensor:
        """[R, L] positions of one chunk's full (unpressed) token ids `inputs["input_ids"]` [1, L];
        `group_seconds` [t] seconds of each temporal group's first frame since the stream's first frame."""
        ids = inputs["input_ids"]
        if self.mode == "shift":
            if self.rows == 1:
                local = torch.arange(ids.shape[1])[None]
            else:
                types = self.adapter.mm_token_type_ids({"input_ids": ids})
                local, deltas = self.base.get_rope_index(ids, mm_token_type_ids=types,
                                                         video_grid_thw=inputs["video_grid_thw"])
                local = local[:, 0]
            positions = local.to(ids.device) + self.next_text
            self.next_text = int(positions.max()) + 1
            return positions
        t, h, w = (int(x) for x in inputs["video_grid_thw"][0])
        h, w = h // self.merge, w // self.merge
        if self.spatial is None:
            self.spatial = (h, w)
            self.next_text = self.origin + max(h, w)
        elif self.spatial != (h, w):
            raise ValueError(f"every chunk of a stream must have the same frame size; the stream started with "
                             f"{self.spatial[0]}x{self.spatial[1]} tokens per frame, this chunk has {h}x{w}")
        if (ids != self.adapter.video_token_id).any():
            raise RuntimeError("vidpress: a Qwen2-VL-style chunk expanded to more than its video placeholders")
        if self.tokens_per_second is not None:
            temporal = (group_seconds.float() * self.tokens_per_second).long()
        else:
            temporal = torch.arange(self.groups, self.groups + t)
        self.groups += t
        grid_t = temporal[:, None, None].expand(t, h, w)
        grid_h = torch.arange(h)[None, :, None].expand(t, h, w)
        grid_w = torch.arange(w)[None, None, :].expand(t, h, w)
        return torch.stack([grid_t, grid_h, grid_w]).reshape(3, -1) + self.origin

    def text(self, length: int, start: int | None = None) -> torch.Tensor:
        """[R, length] positions of text tokens from `start` (default: the next text position)."""
        start = self.next_text if start is None else start
        return (torch.arange(length) + start).expand(self.rows, -1).clone()
