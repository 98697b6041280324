"""CaCoVID — Contribution-aware token Compression for VIDeo (arXiv 2602.01649, AAAI 2026).

A small policy (one decoder layer copied from the VLM's first LLM layer, run without a causal mask over the whole
prompt: system text, video, question) scores every token and every frame; it is trained by combinatorial policy
optimisation against the frozen VLM (`vidpress.training.cacovid`). At inference (the allocation of the authors'
release, `released_allocation`) the frame head splits the top-scored part of the budget over frames, each frame takes
its top tokens by token score, and an evenly spaced, frame-blind fill over all remaining tokens completes the budget.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vidpress.files import load_safetensors, read_json, require_keys
from vidpress.presses.base import Press, keep_top_per_frame, register, token_budget
from vidpress.types import Query, Selection, VideoTokens, check_number

CONFIG_NAME = "cacovid_config.json"
WEIGHTS_NAME = "model.safetensors"
#: The fields of cacovid_config.json (`CaCoVIDPolicy.from_vlm`); rms_norm_eps is optional.
CONFIG_KEYS = ("model_type", "hidden_size", "mrope", "layer_class", "rotary_class", "text_config_class", "text_config")

#: The released checkpoint (a whole VLM folder): the policy's weights sit under this prefix, next to the VLM's own.
RELEASED_PREFIX = "compression_policy."
#: Released parameter names (after the prefix) -> CaCoVIDPolicy's.
RELEASED_NAMES = {"layers.0.": "layer.", "layernorm.": "norm.", "token_compress.": "token_head.",
                  "frame_compress.": "frame_head.", "mode_selection.": "mode_head."}
#: The CaCoVID fields of the released config.json's vision_config.
RELEASED_CONFIG_FIELDS = ("apply_compression", "compression_policy", "imp_ratio", "max_sample_ratio_for_each_frame",
                          "topk", "max_sample_rate", "frame_ratio", "group_size", "max_group_prob", "sample_mode_num")


def _class_path(obj) -> str:
    return f"{type(obj).__module__}:{type(obj).__qualname__}"


def _load_class(path: str):
    module, _, name = path.partition(":")
    if not module.startswith("transformers."):  # never import arbitrary code named in a config file
        raise ValueError(f"policy config names {path!r}; only transformers classes are accepted")
    return getattr(importlib.import_module(module), name)


def head_mlp(width: int, outputs: int = 2) -> nn.Sequential:
    """The released head MLP D -> D/2 -> D/4 -> D/8 -> D/16 -> outputs with SiLU between: Linear layers at indices
    0, 2, 4, 6, 8 of the Sequential (weights [out, in], biases [out]); the last one starts at zero (neutral scores)."""
    dims = [width, width // 2, width // 4, width // 8, width // 16, outputs]
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.SiLU()]
    layers.pop()
    nn.init.zeros_(layers[-1].weight)
    nn.init.zeros_(layers[-1].bias)
    return nn.Sequential(*layers)


class CaCoVIDPolicy(nn.Module):
    """Token, frame and mode scorer of CaCoVID, laid out as the released policy.

    Context: the whole prompt as the VLM sees it (system text, this video's T * M frame tokens, question) with the
    VLM's own position ids (M-RoPE rows (t, h, w) where the family's adapter says `mrope`, else 1-D), run through one
    decoder layer initialised from the LLM's first layer, without a causal mask. The adapter fills `Query.position_ids`,
    `Query.video_position_ids` and `Query.video_offset`; a hand-built Query without them gets [video; text] with
    positions numbered here (video grid ids, then text after them).
    Heads: a shared RMSNorm on the layer's output, then
      token head on every video token -> 2 logits; token score [T, M] = logit 1 (keep) - logit 0 (drop);
      frame head on each frame's mean-pooled tokens -> frame score [T], the same way;
      mode head on the mean of all video tokens -> 2 logits (token mode / frame mode). vidpress loads and runs it,
      but neither the press nor `vidpress train cacovid` uses or trains it.

    Parameter names and shapes (D = hidden_size; a state dict with exactly these keys loads with from_pretrained):
      layer.*                                the LLM decoder layer's own names (e.g. layer.self_attn.q_proj.weight,
                                             layer.mlp.gate_proj.weight, layer.input_layernorm.weight)
      norm.weight                            [D]
      {token,frame,mode}_head.0.weight/bias  [D/2, D] / [D/2]
      {token,frame,mode}_head.2.weight/bias  [D/4, D/2] / [D/4]
      {token,frame,mode}_head.4.weight/bias  [D/8, D/4] / [D/8]
      {token,frame,mode}_head.6.weight/bias  [D/16, D/8] / [D/16]
      {token,frame,mode}_head.8.weight/bias  [2, D/16] / [2] (mode head: [3, D/16] / [3] in the release)
    A folder holds cacovid_config.json (`from_vlm(model).config`: width, family, the transformers classes and text
    config of the layer) and model.safetensors. `from_released` reads the authors' released checkpoint folder instead.
    """

    def __init__(self, config: dict, layer: nn.Module | None = None, rotary: nn.Module | None = None):
        super().__init__()
        if "head_hidden_size" in config:
            raise ValueError(
                "this CaCoVID policy was saved with the earlier head layout (LayerNorm + GELU heads of one hidden "
                "size), which the released architecture replaced; train a new one with `vidpress train cacovid`"
            )
        self.config = dict(config)
        width = config["hidden_size"]
        if width < 16:
            raise ValueError(f"the released heads need hidden_size >= 16 (D -> D/16); got {width}")
        text_config = None
        if layer is None or rotary is None:
            text_config = _load_class(config["text_config_class"]).from_dict(config["text_config"])
            text_config._attn_implementation = "sdpa"
            layer = _load_class(config["layer_class"])(text_config, layer_idx=0)
            rotary = _load_class(config["rotary_class"])(config=text_config)
        self.layer, self.rotary = layer, rotary
        self.norm = nn.RMSNorm(width, eps=float(config.get("rms_norm_eps", 1e-6)))
        self.token_head = head_mlp(width)
        self.frame_head = head_mlp(width)
        self.mode_head = head_mlp(width, int(config.get("mode_outputs", 2)))

    @classmethod
    def from_vlm(cls, model) -> CaCoVIDPolicy:
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
        config = {
            "model_type": model.config.model_type,
            "hidden_size": text_config.hidden_size,
            "rms_norm_eps": float(getattr(text_config, "rms_norm_eps", 1e-6)),
            "mrope": adapter.mrope,  # the rotary module expects 3 position rows (t, h, w)
            "layer_class": _class_path(layer),
            "rotary_class": _class_path(rotary),
            "text_config_class": _class_path(text_config),
            "text_config": text_config.to_dict(),
        }
        return cls(config, layer, rotary).float()

    @classmethod
    def from_released(cls, path, device="cpu") -> CaCoVIDPolicy:
        """The policy of the authors' released checkpoint folder (e.g. moraleyc/CaCoVID_LLaVA-OneVision): the whole VLM
        saved with the policy inside it. The VLM itself loads from the same folder with the usual `from_pretrained`
        (its `compression_policy.*` weights are then unused keys).

        Read from the folder:
          config.json: the VLM's text config (the policy's decoder layer is one layer of that LLM) and, in its
            vision_config, the CaCoVID fields (RELEASED_CONFIG_FIELDS), kept as `config["released"]`;
          model.safetensors, or the shards listed in model.safetensors.index.json: only the keys
            compression_policy.layers.0.*             -> layer.*   (one decoder layer of the LLM)
            compression_policy.layernorm.weight        -> norm.weight
            compression_policy.token_compress.{0,2,4,6,8}.{weight,bias} -> token_head.*
            compression_policy.frame_compress.{0,2,4,6,8}.*           -> frame_head.*
            compression_policy.mode_selection.{0,2,4,6,8}.*           -> mode_head.* (3 outputs)
        A missing field, or a missing, unexpected or mis-shaped policy key, is a ValueError that names it.
        """
        import transformers
        from safetensors import safe_open

        from vidpress.models import adapter_class

        path = Path(path)
        config_path = path / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{path}: no released CaCoVID checkpoint here (expected config.json and the "
                                    "model's safetensors)")
        raw = read_json(config_path, "released CaCoVID checkpoint config")
        vision = raw.get("vision_config") or {}
        missing = [name for name in RELEASED_CONFIG_FIELDS if name not in vision]
        if missing:
            raise ValueError(f"{config_path}: vision_config lacks the released CaCoVID field(s) {', '.join(missing)}; "
                             "is this a CaCoVID checkpoint?")
        vlm_config = transformers.AutoConfig.from_pretrained(path)
        adapter = adapter_class(vlm_config.model_type)
        if adapter is None:
            raise ValueError(f"{config_path}: model_type {vlm_config.model_type!r} is not a supported family")
        text_config = vlm_config.get_text_config()
        text_model = transformers.AutoModel._model_mapping[type(text_config)]
        module = importlib.import_module(text_model.__module__)
        layer = getattr(module, text_model.__name__.replace("Model", "DecoderLayer"))
        rotary = getattr(module, text_model.__name__.replace("Model", "RotaryEmbedding"))
        config = {
            "model_type": vlm_config.model_type,
            "hidden_size": text_config.hidden_size,
            "rms_norm_eps": float(getattr(text_config, "rms_norm_eps", 1e-6)),
            "mrope": adapter.mrope,
            "layer_class": f"{layer.__module__}:{layer.__qualname__}",
            "rotary_class": f"{rotary.__module__}:{rotary.__qualname__}",
            "text_config_class": _class_path(text_config),
            "text_config": text_config.to_dict(),
            "mode_outputs": 3,
            "released": {name: vision[name] for name in RELEASED_CONFIG_FIELDS},
        }
        policy = cls(config)
        index = path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = read_json(index, "safetensors index")
            require_keys(weight_map, ("weight_map",), str(index))
            weight_map = weight_map["weight_map"]
            files = sorted({file for key, file in weight_map.items() if key.startswith(RELEASED_PREFIX)})
        elif (path / WEIGHTS_NAME).is_file():
            files = [WEIGHTS_NAME]
        else:
            raise FileNotFoundError(f"{path}: neither {WEIGHTS_NAME} nor model.safetensors.index.json")
        weights = {}
        for file in files:
            with safe_open(path / file, framework="pt", device=str(device)) as handle:
                for key in handle.keys():
                    if key.startswith(RELEASED_PREFIX):
                        weights[_from_released_name(key)] = handle.get_tensor(key)
        policy._load_checked(weights, f"{path} (keys {RELEASED_PREFIX}*)", released=True)
        return policy.float().to(device).eval()

    def _load_checked(self, weights: dict, source: str, released: bool = False) -> None:
        """Load `weights` (this module's names) after checking them; errors name each key as the source spells it."""
        name = _to_released_name if released else str
        expected = self.state_dict()
        missing = sorted(name(k) for k in set(expected) - set(weights))
        unexpected = sorted(name(k) for k in set(weights) - set(expected))
        misshaped = [f"{name(k)}: {tuple(weights[k].shape)} in the file, {tuple(expected[k].shape)} expected"
                     for k in sorted(set(weights) & set(expected)) if weights[k].shape != expected[k].shape]
        if missing or unexpected or misshaped:
            problems = [f"{label} ({len(keys)}): {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
                        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
                        if keys]
            names = ("compression_policy.{layers.0.*, layernorm.weight, {token_compress,frame_compress,mode_selection}"
                     ".{0,2,4,6,8}.weight/bias}" if released else
                     "layer.* (the decoder layer), norm.weight, {token,frame,mode}_head.{0,2,4,6,8}.weight/bias")
            raise ValueError(f"{source} does not match a CaCoVIDPolicy of width {self.hidden_size}: "
                             + "; ".join(problems) + f". Expected names: {names}")
        self.load_state_dict(weights)

    @property
    def hidden_size(self) -> int:
        return self.config["hidden_size"]

    def check_width(self, width: int) -> None:
        if width != self.hidden_size:
            raise ValueError(
                f"this CaCoVID policy was built for a {self.config['model_type']} model of width {self.hidden_size}, "
                f"but the video tokens have width {width}: train a policy for this model (vidpress train cacovid)"
            )

    def context(self, video: torch.Tensor, grid: tuple[int, int, int],
                query: Query) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The policy's input for one video: embeddings [S, D], rotary position ids [R, S] (R = 3 for M-RoPE, else 1)
        and the offset of the video's T * M tokens in the sequence."""
        rows = 3 if self.config["mrope"] else 1
        text = query.embeddings
        n = video.shape[0] * video.shape[1]
        flat = video.reshape(n, -1)
        if query.position_ids is not None and query.video_position_ids is not None:
            offset = int(query.video_offset or 0)
            text_pos, video_pos = _rows(query.position_ids, rows), _rows(query.video_position_ids, rows)
            if text_pos.shape[1] != text.shape[0] or video_pos.shape[1] != n:
                raise ValueError(
                    f"the Query's position ids ({text_pos.shape[1]} text, {video_pos.shape[1]} video) do not match its "
                    f"{text.shape[0]} text tokens and the video's {n} tokens"
                )
            x = torch.cat([text[:offset].to(flat), flat, text[offset:].to(flat)])
            pos = torch.cat([text_pos[:, :offset], video_pos, text_pos[:, offset:]], dim=1)
            return x, pos, offset
        t, h, w = grid
        if rows == 1:
            pos = torch.arange(n + text.shape[0])[None]
        else:
            video_pos = torch.stack(
                torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")).reshape(3, -1)
            pos = torch.cat([video_pos, torch.arange(text.shape[0]).expand(3, -1) + max(t, h, w)], dim=1)
        return torch.cat([flat, text.to(flat)]), pos, 0

    def forward(self, videos: list[torch.Tensor], grids: list[tuple[int, int, int]], queries: list[Query]):
        """Score a batch of videos. videos: [T_i, M_i, D] each; queries: the Query of each video's prompt.

        Returns (token scores, frame scores, mode logits): lists of [T_i, M_i], [T_i] and [2] float tensors.
        """
        dtype = next(self.parameters()).dtype
        device = next(self.parameters()).device
        contexts = []
        for video, grid, query in zip(videos, grids, queries):
            self.check_width(video.shape[-1])
            if query is None or query.embeddings is None:
                raise ValueError("CaCoVIDPolicy needs each video's Query with the prompt's text embeddings")
            self.check_width(query.embeddings.shape[-1])
            contexts.append(self.context(video.to(device, dtype), grid, query))
        B, S = len(videos), max(x.shape[0] for x, _, _ in contexts)
        rows = 3 if self.config["mrope"] else 1
        x = torch.zeros(B, S, self.hidden_size, dtype=dtype, device=device)
        valid = torch.zeros(B, S, dtype=torch.bool, device=device)
        position_ids = torch.zeros(rows, B, S, dtype=torch.long, device=device)
        for i, (seq, pos, _) in enumerate(contexts):
            x[i, : seq.shape[0]] = seq
            valid[i, : seq.shape[0]] = True
            position_ids[:, i, : seq.shape[0]] = pos.to(device)
        if rows == 1:
            position_ids = position_ids[0]
        position_embeddings = self.rotary(x, position_ids)
        # Bidirectional: every real token sees every real token; padded keys are masked (additive mask).
        mask = torch.zeros(B, 1, S, S, dtype=dtype, device=device)
        mask.masked_fill_(~valid[:, None, None, :], torch.finfo(dtype).min)
        out = self.layer(x, attention_mask=mask, position_ids=position_ids, position_embeddings=position_embeddings,
                         is_causal=False)
        hidden = self.norm(out[0] if isinstance(out, tuple) else out)
        token_scores, frame_scores, mode_logits = [], [], []
        for i, (video, (_, _, offset)) in enumerate(zip(videos, contexts)):
            T, M = video.shape[:2]
            h = hidden[i, offset : offset + T * M].view(T, M, -1)
            logits = self.token_head(h)
            token_scores.append((logits[..., 1] - logits[..., 0]).float())
            frame_logits = self.frame_head(h.mean(dim=1))
            frame_scores.append((frame_logits[..., 1] - frame_logits[..., 0]).float())
            mode_logits.append(self.mode_head(h.mean(dim=(0, 1))).float())
        return token_scores, frame_scores, mode_logits

    @torch.no_grad()
    def score(self, tokens: VideoTokens, query: Query) -> tuple[torch.Tensor, torch.Tensor]:
        """Token scores [T, M] and frame scores [T] of one video and its prompt."""
        token_scores, frame_scores, _ = self([tokens.features], [tokens.grid], [query])
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
        """Load a policy folder (save_pretrained, or released weights renamed to the names above with a config).
        Missing, unexpected or mis-shaped weights are a ValueError that lists them."""
        path = Path(path)
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{path}: no CaCoVID policy here (expected {CONFIG_NAME} and {WEIGHTS_NAME})")
        config_path = path / CONFIG_NAME
        config = read_json(config_path, "CaCoVID policy config")
        require_keys(config, CONFIG_KEYS, str(config_path))
        width = config["hidden_size"]
        if isinstance(width, bool) or not isinstance(width, int):
            raise ValueError(f"{config_path}: hidden_size must be an integer (the LLM width); got {width!r}")
        try:
            policy = cls(config)
        except (KeyError, TypeError, ValueError, AttributeError, ImportError) as error:
            raise ValueError(f"{config_path}: cannot build a CaCoVID policy from this config ({type(error).__name__}: "
                             f"{error}); write it with `vidpress train cacovid` (save_pretrained)") from None
        weights = load_safetensors(path / WEIGHTS_NAME, "CaCoVID policy weights", device)
        policy._load_checked(weights, str(path / WEIGHTS_NAME))
        return policy.float().to(device).eval()


def _from_released_name(key: str) -> str:
    """compression_policy.token_compress.0.weight -> token_head.0.weight (unknown names keep their released form)."""
    key = key.removeprefix(RELEASED_PREFIX)
    for released, ours in RELEASED_NAMES.items():
        if key.startswith(released):
            return ours + key.removeprefix(released)
    return RELEASED_PREFIX + key


def _to_released_name(key: str) -> str:
    """token_head.0.weight -> compression_policy.token_compress.0.weight (the inverse of `_from_released_name`)."""
    for released, ours in RELEASED_NAMES.items():
        if key.startswith(ours):
            return RELEASED_PREFIX + released + key.removeprefix(ours)
    return key


def _rows(position_ids: torch.Tensor, rows: int) -> torch.Tensor:
    """Position ids [L], [R, L] as [rows, L]: M-RoPE keeps its last 3 rows (a 4th, leading text row is dropped)."""
    pos = position_ids if position_ids.dim() == 2 else position_ids[None]
    if rows == 3 and pos.shape[0] == 4:
        pos = pos[1:]
    if pos.shape[0] != rows:
        raise ValueError(
            f"expected position ids with {rows} row(s) for this policy; got shape {tuple(position_ids.shape)}")
    return pos.long()


def released_allocation(token_scores: torch.Tensor, frame_scores: torch.Tensor, retention: float,
                        imp_ratio: float = 0.5, min_ratio: float = 0.5, max_ratio: float = 1.5,
                        frame_logit_max: float = 3.0, budget: int | None = None) -> torch.Tensor:
    """The released inference allocation; keep mask [T, M].

    token_scores [T, M] and frame_scores [T] are logit differences (keep - drop); N = T * M; R = retention;
    s = max_ratio * R (the release's max_sample_ratio_for_each_frame, 1.5 * R in its evaluation).
    1. f = frame_scores rescaled so max |f| = frame_logit_max; shares = softmax(f) clipped to
       [min_ratio / T, max_ratio / T] (= [1/(2T), s/(T R)]) and renormalised to sum 1.
    2. Top counts c_t = round(shares_t * round(imp_ratio * R * N)), clipped to [1, int(imp_ratio * M * s)] (the
       upper bound wins if it is below 1, as torch.clamp does); then fixed one token at a time to
       floor(imp_ratio * R * N): while the sum is too large, the FIRST frame with the largest c_t gives one; while
       too small, the FIRST frame with the smallest c_t takes one (additions ignore the cap). round() is
       half-to-even. Frame t keeps its c_t tokens of highest token score (ties to the lower index).
    3. Fill: the rest of the budget, budget - sum(c_t), at linspace(0, n - 1, k).round() (float32, as torch's
       default) over the n not-yet-kept tokens of the whole video in raster order, ignoring frames.
    budget: the total; None (released) floor(R * N), at least 1.
    """
    T, M = token_scores.shape
    N = T * M
    f = frame_scores.double()
    peak = f.abs().max()
    if peak > 0:
        f = f * (frame_logit_max / peak)
    shares = torch.softmax(f, dim=0).clamp(min_ratio / T, max_ratio / T)
    shares = shares / shares.sum()
    top = imp_ratio * retention * N
    cap = math.floor(imp_ratio * M * max_ratio * retention + 1e-9)
    counts = torch.round(shares * round(top)).long().clamp(min=1).clamp(max=cap).tolist()
    target = math.floor(top + 1e-9)
    while sum(counts) > target:
        counts[counts.index(max(counts))] -= 1
    while sum(counts) < target:
        counts[counts.index(min(counts))] += 1
    if budget is None:
        budget = max(1, math.floor(retention * N + 1e-9))
    keep = torch.zeros(N, dtype=torch.bool, device=token_scores.device)
    keep[keep_top_per_frame(token_scores, torch.tensor(counts).clamp(max=M))] = True
    rest = budget - int(keep.sum())
    if rest > 0:
        remaining = (~keep).nonzero().squeeze(1)
        picks = torch.linspace(0, remaining.numel() - 1, rest).round().long()
        keep[remaining[picks.to(remaining.device)]] = True
    return keep.view(T, M)


@register("cacovid")
@dataclass
class CaCoVIDPress(Press):
    """CaCoVID token selection with a trained `CaCoVIDPolicy`, by the released allocation (`released_allocation`):
    frame logits rescaled to max |f| = frame_logit_max, frame shares softmax-clipped to [min_ratio / T,
    max_ratio / T]; the top-scored part floor(imp_ratio * R * N) split over frames by the shares (per-frame cap
    int(imp_ratio * M * max_ratio * R), rounded then fixed one token at a time as released); the rest an evenly
    spaced fill over all remaining tokens, frame-blind.

    Args:
        policy: the trained policy, built for the model it runs on: a `CaCoVIDPolicy`, or the folder one was saved to
            (`vidpress train cacovid` writes it), loaded onto the model's device when the press is applied.
        retention: R, fraction of the N = T * M tokens kept.
        budget: "released" keeps floor(R * N) tokens as the release does (at least 1); "exact" keeps round(R * N),
            one more fill token where they differ.
        imp_ratio: share of the budget taken by the token head's top tokens (0.5 released).
        min_ratio, max_ratio: clip of the frame shares relative to the uniform 1 / T (0.5 and 1.5 released);
            max_ratio * R is the release's max_sample_ratio_for_each_frame, which also caps each frame's top count.
        frame_logit_max: the frame logits are rescaled so their largest magnitude is this (3 released).
    """

    policy: CaCoVIDPolicy | str | Path | None = None
    imp_ratio: float = 0.5
    min_ratio: float = 0.5
    max_ratio: float = 1.5
    frame_logit_max: float = 3.0
    budget: str = "released"

    query_aware = True
    needs_policy = True
    no_frame_budgets_because = "its trained frame head sets the per-frame budgets itself (the release's allocation)"

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.policy, (str, Path)):
            if not Path(self.policy).is_dir():
                raise ValueError(f"policy {str(self.policy)!r} is not a directory; pass a folder written by "
                                 "`vidpress train cacovid` (or a CaCoVIDPolicy)")
            if not (Path(self.policy) / CONFIG_NAME).is_file() or not (Path(self.policy) / WEIGHTS_NAME).is_file():
                raise ValueError(f"policy {str(self.policy)!r}: no CaCoVID policy there (expected {CONFIG_NAME} and "
                                 f"{WEIGHTS_NAME}); pass a folder written by `vidpress train cacovid`")
        elif self.policy is not None and not isinstance(self.policy, CaCoVIDPolicy):
            raise ValueError(f"policy must be a CaCoVIDPolicy or a policy folder; got {type(self.policy).__name__}")
        check_number("imp_ratio", self.imp_ratio, "a number in [0, 1]", lambda v: 0 <= v <= 1)
        clip = "(frame shares are clipped to [min_ratio / T, max_ratio / T])"
        check_number("min_ratio", self.min_ratio, f"a number in [0, 1] {clip}", lambda v: 0 <= v <= 1)
        check_number("max_ratio", self.max_ratio, f"a number >= 1 {clip}", lambda v: v >= 1)
        check_number("frame_logit_max", self.frame_logit_max, "a number > 0", lambda v: v > 0)
        if self.budget not in ("released", "exact"):
            raise ValueError(f"budget must be 'released' (floor(R * N) tokens, as the release) or 'exact' "
                             f"(round(R * N)); got {self.budget!r}")

    def post_init_from_model(self, model) -> None:
        """Load a policy given as a folder onto the model's device, and check it was built for a model this wide."""
        if isinstance(self.policy, (str, Path)):
            self.policy = CaCoVIDPolicy.from_pretrained(self.policy, device=model.device)
        if self.policy is not None:
            self.policy.check_width(model.config.get_text_config().hidden_size)

    def compress(self, tokens: VideoTokens, query: Query | None) -> Selection:
        if isinstance(self.policy, (str, Path)):
            raise ValueError("CaCoVIDPress(policy=<folder>) loads its policy when applied to a model (`press(model)`); "
                             "to call select() directly, pass policy=CaCoVIDPolicy.from_pretrained(folder)")
        if self.policy is None:
            raise ValueError(
                "CaCoVIDPress needs a trained policy: CaCoVIDPress(policy=CaCoVIDPolicy.from_pretrained(path), ...); "
                "train one with `vidpress train cacovid`"
            )
        if query is None or query.embeddings is None:
            raise ValueError("CaCoVIDPress is query-aware: select() needs a Query with the prompt's embeddings")
        T, M = tokens.num_frames, tokens.tokens_per_frame
        token_scores, frame_scores = self.policy.score(tokens, query)
        if not (torch.isfinite(token_scores).all() and torch.isfinite(frame_scores).all()):
            raise ValueError(
                "the CaCoVID policy gave non-finite scores for this video; is it the policy trained for this model?")
        total = token_budget(self.retention, T * M) if self.budget == "exact" else None
        keep = released_allocation(token_scores, frame_scores, self.retention, self.imp_ratio, self.min_ratio,
                                   self.max_ratio, self.frame_logit_max, budget=total)
        keep_indices = keep.flatten().nonzero().squeeze(1).to(tokens.features.device)
        return Selection(keep_indices, T * M, frame_budgets=keep.sum(1).cpu())
