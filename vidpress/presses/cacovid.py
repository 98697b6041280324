"""CaCoVID — Contribution-aware token Compression for VIDeo (arXiv 2602.01649, AAAI 2026).

A small policy (one decoder layer copied from the VLM's first LLM layer, run bidirectionally over the video and
question tokens) scores every token and every frame; it is trained by combinatorial policy optimisation against
the frozen VLM (`vidpress.training.cacovid`). At inference the frame head splits the budget over frames and the
token head picks the tokens inside them, topped up with evenly spaced tokens.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vidpress.presses.base import Press, token_budget
from vidpress.types import Query, Selection, VideoTokens

CONFIG_NAME = "cacovid_config.json"
WEIGHTS_NAME = "model.safetensors"


def _class_path(obj) -> str:
    return f"{type(obj).__module__}:{type(obj).__qualname__}"


def _load_class(path: str):
    module, _, name = path.partition(":")
    if not module.startswith("transformers."):  # never import arbitrary code named in a config file
        raise ValueError(f"policy config names {path!r}; only transformers classes are accepted")
    return getattr(importlib.import_module(module), name)


class CaCoVIDPolicy(nn.Module):
    """Token and frame scorer of CaCoVID.

    Input: per video its frame tokens [T, M, D] (grid t, h, w) and the question's embeddings [L, D], laid out as
    one sequence [video tokens; question tokens] with the family's rotary positions (3-D M-RoPE ids (t, h, w) for
    the Qwen families, 1-D otherwise), run through one decoder layer without a causal mask.
    Output: token scores [T, M] (keep logit minus drop logit) and frame scores [T] (same, from mean-pooled frames).

    Build it from a VLM with `CaCoVIDPolicy.from_vlm(model)`; save/load with save_pretrained/from_pretrained.
    """

    def __init__(self, config: dict, layer: nn.Module | None = None, rotary: nn.Module | None = None):
        super().__init__()
        self.config = dict(config)
        width, hidden = config["hidden_size"], config["head_hidden_size"]
        if layer is None or rotary is None:
            text_config = _load_class(config["text_config_class"]).from_dict(config["text_config"])
            text_config._attn_implementation = "sdpa"
            layer = _load_class(config["layer_class"])(text_config, layer_idx=0)
            rotary = _load_class(config["rotary_class"])(config=text_config)
        self.layer, self.rotary = layer, rotary
        self.token_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, 2))
        self.frame_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, 2))
        for head in (self.token_head, self.frame_head):  # start neutral: every token and frame scored 0
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)

    @classmethod
    def from_vlm(cls, model, head_hidden_size: int | None = None) -> CaCoVIDPolicy:
        """A fresh policy for `model` (any supported family): its first LLM layer and rotary module, deep-copied."""
        import copy

        from vidpress.models import get_adapter

        adapter = get_adapter(model)
        text_config = model.config.get_text_config()
        layer = copy.deepcopy(adapter.text_layers()[0])
        rotary = copy.deepcopy(adapter.base.language_model.rotary_emb)
        # The copy's attention reads its own config copy: switch it to SDPA (bidirectional through is_causal=False)
        # without touching the VLM's.
        layer_config = copy.deepcopy(text_config)
        layer_config._attn_implementation = "sdpa"
        for module in layer.modules():
            if getattr(module, "config", None) is not None:
                module.config = layer_config
        width = text_config.hidden_size
        config = {
            "model_type": model.config.model_type,
            "hidden_size": width,
            "head_hidden_size": int(head_hidden_size or max(16, width // 2)),
            "mrope": model.config.model_type.startswith("qwen"),
            "layer_class": _class_path(layer),
            "rotary_class": _class_path(rotary),
            "text_config_class": _class_path(text_config),
            "text_config": text_config.to_dict(),
        }
        policy = cls(config, layer, rotary).float()
        return policy

    @property
    def hidden_size(self) -> int:
        return self.config["hidden_size"]

    def check_width(self, width: int) -> None:
        if width != self.hidden_size:
            raise ValueError(
                f"this CaCoVID policy was built for a {self.config['model_type']} model of width {self.hidden_size}, "
                f"but the video tokens have width {width}: train a policy for this model (vidpress train cacovid)"
            )

    def positions(self, grid: tuple[int, int, int], num_text: int, device) -> torch.Tensor:
        """Rotary position ids of [video; question]: [3, N + L] (M-RoPE) or [N + L]."""
        t, h, w = grid
        if not self.config["mrope"]:
            return torch.arange(t * h * w + num_text, device=device)
        video = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")).reshape(3, -1)
        text = torch.arange(num_text).expand(3, -1) + max(t, h, w)
        return torch.cat([video, text], dim=1).to(device)

    def forward(self, videos: list[torch.Tensor], grids: list[tuple[int, int, int]], queries: list[torch.Tensor]):
        """Score a batch of videos. videos: [T_i, M_i, D] each; queries: [L_i, D] each.

        Returns (token scores, frame scores): lists of [T_i, M_i] and [T_i] float tensors.
        """
        dtype = next(self.parameters()).dtype
        device = next(self.parameters()).device
        lengths = [v.shape[0] * v.shape[1] + q.shape[0] for v, q in zip(videos, queries)]
        B, S = len(videos), max(lengths)
        x = torch.zeros(B, S, self.hidden_size, dtype=dtype, device=device)
        valid = torch.zeros(B, S, dtype=torch.bool, device=device)
        rows = 3 if self.config["mrope"] else 1
        position_ids = torch.zeros(rows, B, S, dtype=torch.long, device=device)
        for i, (video, grid, query) in enumerate(zip(videos, grids, queries)):
            self.check_width(video.shape[-1])
            self.check_width(query.shape[-1])
            n = video.shape[0] * video.shape[1]
            x[i, :n] = video.reshape(n, -1).to(device, dtype)
            x[i, n : lengths[i]] = query.to(device, dtype)
            valid[i, : lengths[i]] = True
            position_ids[:, i, : lengths[i]] = self.positions(grid, query.shape[0], device).view(rows, -1)
        if not self.config["mrope"]:
            position_ids = position_ids[0]
        position_embeddings = self.rotary(x, position_ids)
        # Bidirectional: every real token sees every real token; padded keys are masked (additive mask).
        mask = torch.zeros(B, 1, S, S, dtype=dtype, device=device)
        mask.masked_fill_(~valid[:, None, None, :], torch.finfo(dtype).min)
        out = self.layer(x, attention_mask=mask, position_ids=position_ids, position_embeddings=position_embeddings, is_causal=False)
        hidden = out[0] if isinstance(out, tuple) else out
        token_scores, frame_scores = [], []
        for i, video in enumerate(videos):
            T, M = video.shape[:2]
            h = hidden[i, : T * M].view(T, M, -1)
            logits = self.token_head(h)
            token_scores.append((logits[..., 1] - logits[..., 0]).float())
            frame_logits = self.frame_head(h.mean(dim=1))
            frame_scores.append((frame_logits[..., 1] - frame_logits[..., 0]).float())
        return token_scores, frame_scores

    @torch.no_grad()
    def score(self, tokens: VideoTokens, query: Query) -> tuple[torch.Tensor, torch.Tensor]:
        """Token scores [T, M] and frame scores [T] of one video and its question."""
        token_scores, frame_scores = self([tokens.features], [tokens.grid], [query.embeddings])
        return token_scores[0], frame_scores[0]

    def save_pretrained(self, path) -> None:
        """Write cacovid_config.json and model.safetensors to the folder `path`."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_NAME).write_text(json.dumps(self.config, indent=2, default=str) + "\n")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, path / WEIGHTS_NAME)

    @classmethod
    def from_pretrained(cls, path, device="cpu") -> CaCoVIDPolicy:
        """Load a policy saved with save_pretrained."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{path}: no CaCoVID policy here (expected {CONFIG_NAME} and {WEIGHTS_NAME})")
        policy = cls(json.loads((path / CONFIG_NAME).read_text()))
        policy.load_state_dict(load_file(path / WEIGHTS_NAME, device=str(device)))
        return policy.float().to(device).eval()


def allocate_budgets(total: int, shares: torch.Tensor, cap: int) -> torch.Tensor:
    """Integer budgets [T] summing exactly to `total`, each <= cap, proportional to `shares` [T] (sum 1):
    floors first, then one token at a time to the frames furthest below their ideal share that still have room."""
    T = shares.shape[0]
    if total > T * cap:
        raise ValueError(f"cannot place {total} tokens in {T} frames of {cap}")
    ideal = shares.double() * total
    budgets = ideal.floor().long().clamp(max=cap)
    while int(budgets.sum()) < total:
        room = budgets < cap
        deficit = (ideal - budgets).masked_fill(~room, -math.inf)
        take = min(total - int(budgets.sum()), int(room.sum()))
        budgets[torch.topk(deficit, take).indices] += 1
    return budgets


def top_and_spread(scores: torch.Tensor, budget: int, imp_ratio: float) -> torch.Tensor:
    """Keep mask [M] of one frame: the ceil(imp_ratio * budget) top-scoring tokens, then evenly spaced tokens
    among the others (in index order) for the rest of the budget."""
    M = scores.shape[0]
    keep = torch.zeros(M, dtype=torch.bool, device=scores.device)
    if budget <= 0:
        return keep
    top = min(budget, math.ceil(imp_ratio * budget))
    keep[torch.sort(scores, descending=True, stable=True).indices[:top]] = True
    rest = budget - top
    if rest:
        others = (~keep).nonzero().squeeze(1)
        picks = ((torch.arange(rest, device=scores.device) + 0.5) * others.numel() / rest).long()
        keep[others[picks]] = True
    return keep


@dataclass
class CaCoVIDPress(Press):
    """CaCoVID token selection with a trained `CaCoVIDPolicy`.

    Args:
        policy: the trained policy (`CaCoVIDPolicy.from_pretrained(path)`), built for the model it runs on.
        retention: R; exactly token_budget(R, T * M) tokens are kept.
        imp_ratio: share of each frame's budget filled by the token head's top tokens (0.5 released); the rest
            is evenly spaced over the frame's other tokens.
        frame_share_range: each frame's budget share (softmax of the frame scores) is clipped to
            [lo / T, hi / T] and renormalised, so no frame is starved or hoards the budget beyond these factors.
        frame_temperature: temperature of that softmax (lower: budgets follow the frame head more sharply).
    """

    policy: CaCoVIDPolicy | None = None
    imp_ratio: float = 0.5
    frame_share_range: tuple[float, float] = (0.1, 3.0)
    frame_temperature: float = 1.0

    query_aware = True
    #: built by name without a policy, the press only works at retention 1 (the registry's generic tests skip it)
    needs_policy = True

    def __post_init__(self):
        super().__post_init__()
        if self.policy is not None and not isinstance(self.policy, CaCoVIDPolicy):
            raise ValueError(f"policy must be a CaCoVIDPolicy; got {type(self.policy).__name__}")
        if not 0.0 <= self.imp_ratio <= 1.0:
            raise ValueError(f"imp_ratio must be in [0, 1]; got {self.imp_ratio!r}")
        lo, hi = (float(v) for v in self.frame_share_range)
        if not 0.0 <= lo <= 1.0 <= hi:
            raise ValueError(f"frame_share_range must be (lo, hi) with 0 <= lo <= 1 <= hi; got {self.frame_share_range!r}")
        self.frame_share_range = (lo, hi)
        if not self.frame_temperature > 0:
            raise ValueError(f"frame_temperature must be > 0; got {self.frame_temperature!r}")

    def frame_budgets(self, frame_scores: torch.Tensor, total: int, cap: int) -> torch.Tensor:
        """Budgets [T] summing to `total` from frame scores [T]: softmax, clipped, renormalised, capped at `cap`."""
        T = frame_scores.shape[0]
        lo, hi = self.frame_share_range
        shares = torch.softmax(frame_scores.double() / self.frame_temperature, dim=0).clamp(lo / T, hi / T)
        return allocate_budgets(total, shares / shares.sum(), cap)

    def compress(self, tokens: VideoTokens, query: Query | None) -> Selection:
        if self.policy is None:
            raise ValueError(
                "CaCoVIDPress needs a trained policy: CaCoVIDPress(policy=CaCoVIDPolicy.from_pretrained(path), ...); "
                "train one with `vidpress train cacovid`"
            )
        if query is None or query.embeddings is None:
            raise ValueError("CaCoVIDPress is query-aware: select() needs a Query with the question's embeddings")
        T, M = tokens.num_frames, tokens.tokens_per_frame
        token_scores, frame_scores = self.policy.score(tokens, query)
        if not (torch.isfinite(token_scores).all() and torch.isfinite(frame_scores).all()):
            raise ValueError("the CaCoVID policy gave non-finite scores for this video; is it the policy trained for this model?")
        budgets = self.frame_budgets(frame_scores, token_budget(self.retention, T * M), M)
        keep = torch.stack([top_and_spread(token_scores[t], int(budgets[t]), self.imp_ratio) for t in range(T)])
        keep_indices = keep.flatten().nonzero().squeeze(1).to(tokens.features.device)
        return Selection(keep_indices, T * M, frame_budgets=budgets.cpu())
