"""Clip and question embedders: frames and texts into one space, L2-normalised, for nearest-neighbour retrieval.

One protocol, two implementations:

    embed_frames(frames uint8 [N, H, W, 3]) -> float [N, D]
    embed_text(texts: list[str])            -> float [Q, D]

- `CLIPEmbedder`: a contrastively trained image-text dual encoder (CLIP, SigLIP, SigLIP2, ... any transformers
  model with `get_image_features` / `get_text_features`) loaded from a local folder, as MARC retrieves.
- `VLMEmbedder`: the fallback without a second model: the Video LLM's own projected vision tokens (mean per frame)
  and its text input embeddings (mean over the question's tokens). Both live in the LLM's input space, but they
  were never trained to align, so expect weaker retrieval than a dual encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vidpress.files import weights_error
from vidpress.retrieval.events import check_frames


@runtime_checkable
class Embedder(Protocol):
    """What the retriever needs: frames and texts in one L2-normalised space of width D."""

    def embed_frames(self, frames) -> torch.Tensor: ...

    def embed_text(self, texts: list[str]) -> torch.Tensor: ...


def check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts) if isinstance(texts, (list, tuple)) else texts
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError(f"texts must be a non-empty list of non-empty strings; got {texts!r}")
    return texts


def _batches(frames, batch_size: int, progress: bool, what: str):
    """Yield uint8 numpy chunks of at most `batch_size` frames, with a progress bar when asked."""
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    frames = check_frames(frames)
    frames = frames.numpy() if isinstance(frames, torch.Tensor) else frames
    starts = range(0, len(frames), batch_size)
    for start in tqdm(starts, desc=what, unit="batch", disable=not progress or len(starts) < 2):
        yield frames[start : start + batch_size]


def _pooled(output) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output holds the projected embedding; 4.x a tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@dataclass
class CLIPEmbedder:
    """A CLIP/SigLIP-style dual encoder: `get_image_features` per frame, `get_text_features` per question.

    Args:
        model: the dual-encoder model (e.g. CLIPModel, SiglipModel), in eval mode.
        processor: its processor (image processor + tokenizer).
        batch_size: frames per forward. progress: show a progress bar over frame batches.
    """

    model: torch.nn.Module
    processor: object
    batch_size: int = 32
    progress: bool = False

    def __post_init__(self):
        missing = [m for m in ("get_image_features", "get_text_features") if not hasattr(self.model, m)]
        if missing:
            raise ValueError(f"{type(self.model).__name__} is not a dual encoder: it has no {', '.join(missing)}")

    @classmethod
    def from_pretrained(cls, path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                        **kwargs) -> CLIPEmbedder:
        """Load any transformers CLIP/SigLIP-style model and its processor from a local folder."""
        import vidpress  # noqa: F401  (makes torchvision importable before processor classes)
        # isort: split
        from safetensors import SafetensorError
        from transformers import AutoModel, AutoProcessor

        if not Path(path).is_dir():
            raise ValueError(f"embedder path {str(path)!r} is not a directory; pass a local CLIP/SigLIP folder "
                             "(from save_pretrained)")
        try:
            model = AutoModel.from_pretrained(path, dtype=dtype)
        except SafetensorError as error:
            raise weights_error(path, error) from None
        model = model.to(device).eval()
        return cls(model, AutoProcessor.from_pretrained(path), **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def embed_frames(self, frames) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> [N, D] L2-normalised image embeddings (float32, on CPU)."""
        out = []
        for batch in _batches(frames, self.batch_size, self.progress, "embedding frames"):
            pixels = self.processor.image_processor(images=list(batch), return_tensors="pt")["pixel_values"]
            pixels = pixels.to(self.device, next(self.model.parameters()).dtype)
            out.append(_pooled(self.model.get_image_features(pixel_values=pixels)).float().cpu())
        return F.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """Q texts -> [Q, D] L2-normalised text embeddings (float32, on CPU)."""
        texts = check_texts(texts)
        text_config = self.model.config.text_config
        # SigLIP-style models were trained on fixed-length text padded with the pad token and no attention mask.
        fixed = self.model.config.model_type.startswith("siglip")
        tokens = self.processor.tokenizer(
            texts, padding="max_length" if fixed else True, truncation=True,
            max_length=text_config.max_position_embeddings, return_tensors="pt",
        )
        kwargs = {"input_ids": tokens["input_ids"].to(self.device)}
        if not fixed and "attention_mask" in tokens:
            kwargs["attention_mask"] = tokens["attention_mask"].to(self.device)
        return F.normalize(_pooled(self.model.get_text_features(**kwargs)).float().cpu(), dim=-1)


@dataclass
class VLMEmbedder:
    """The Video LLM's own embeddings, for retrieval without a second model.

    A frame's embedding is the mean of its visual tokens after the projector, from the adapter's public encode
    path (`get_video_features`) with the frame as a one-frame video (repeated to the temporal patch size where the
    family merges frames in time, as its processor pads). A question's embedding is the mean of its tokens' input
    embeddings (no special tokens). Works for every family `vidpress.models.get_adapter` supports.

    Args:
        model: a *ForConditionalGeneration Video LLM. processor: its processor.
        batch_size: frames per encoder call. progress: show a progress bar over frame batches.
    """

    model: torch.nn.Module
    processor: object
    batch_size: int = 8
    progress: bool = False

    def __post_init__(self):
        from vidpress.models import get_adapter

        self.adapter = get_adapter(self.model)
        self.repeat = int(getattr(self.model.config.vision_config, "temporal_patch_size", 1) or 1)

    @torch.no_grad()
    def embed_frames(self, frames) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> [N, D] L2-normalised mean projected visual token per frame (float32, on CPU)."""
        out = []
        for batch in _batches(frames, self.batch_size, self.progress, "embedding frames"):
            videos = [np.repeat(frame[None], self.repeat, axis=0) for frame in batch]
            inputs = dict(self.processor.video_processor(videos=videos, do_sample_frames=False, return_tensors="pt"))
            inputs = {k: v.to(self.model.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            if inputs["pixel_values_videos"].is_floating_point():
                inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(self.model.dtype)
            layouts = self.adapter.video_layouts(self.adapter.encode("video", inputs), inputs)
            if len(layouts) != len(batch):
                raise RuntimeError(f"vidpress: {len(batch)} one-frame videos gave {len(layouts)} encoded videos")
            out.append(torch.stack([layout.tokens.features.float().mean((0, 1)) for layout in layouts]).cpu())
        return F.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """Q texts -> [Q, D] L2-normalised mean input embedding of each text's tokens (float32, on CPU)."""
        texts = check_texts(texts)
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        table = self.model.get_input_embeddings()
        out = []
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0].to(table.weight.device)
            if ids.numel() == 0:
                raise ValueError(f"the tokenizer gives no tokens for {text!r}")
            out.append(table(ids).float().mean(0).cpu())
        return F.normalize(torch.stack(out), dim=-1)
