"""The adapter base: turns a model call with raw video inputs into the same call with fewer video tokens.

Flow (one direction): processor outputs -> the model's own `get_video_features` / `get_image_features`
-> positions of the FULL sequence -> one `VideoTokens` per video -> `press.select` -> slice every per-token
input (ids, mask, token types, positions, labels) with one keep mask -> re-pad -> call the model with
`mm_encoder_outputs` holding the kept features. Kept tokens keep the positions they had in the full sequence.
Families differ only in how features are laid out and how positions are computed; subclasses say that.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

from vidpress.models.vision_stats import VisionStatsRecorder
from vidpress.types import Query, Selection, VideoTokens

# Per-token model inputs that must be cut with the keep mask, with their padding value (None: pad token id).
SEQUENCE_INPUTS = {"input_ids": None, "attention_mask": 0, "mm_token_type_ids": 0, "token_type_ids": 0, "labels": -100}
# Raw pixel inputs replaced by pre-computed `mm_encoder_outputs`.
PIXEL_INPUTS = ("pixel_values", "pixel_values_videos")


@dataclass
class PressReport:
    """What one pressed call did.

    selections: one Selection per video, in placeholder order over (batch, sequence); for presses acting inside
        the LLM, what survives the last stage.
    videos: the VideoTokens each selection was made from (same order).
    sample_of_video: batch index of each video.
    extra_tokens: per video, always-kept placeholder tokens after its frame tokens (LLaVA-OneVision's newline).
    sequence_length: (before, after) padded sequence length entering the LLM.
    layer_tokens: for presses acting inside the LLM, frame tokens each decoder layer processed (whole batch).
    input_ids: [B, L'] token ids of the pressed sequence; where the caller passed `inputs_embeds` alone, the visual
        placeholder ids where the embeddings are placeholders and the pad id elsewhere.
    """

    selections: list[Selection] = field(default_factory=list)
    videos: list[VideoTokens] = field(default_factory=list)
    sample_of_video: list[int] = field(default_factory=list)
    extra_tokens: list[int] = field(default_factory=list)
    sequence_length: tuple[int, int] = (0, 0)
    layer_tokens: list[int] | None = None
    input_ids: torch.Tensor | None = None

    @property
    def visual_tokens_before(self) -> int:
        return sum(s.num_tokens for s in self.selections)

    @property
    def visual_tokens_after(self) -> int:
        return sum(s.num_kept for s in self.selections)

    @property
    def retention(self) -> float:
        """Effective retention over all videos of the call: kept / all frame tokens, averaged over the LLM's
        layers for presses acting inside it (1.0 when there was no video)."""
        before = self.visual_tokens_before
        if not before:
            return 1.0
        if self.layer_tokens:
            return sum(self.layer_tokens) / len(self.layer_tokens) / before
        return self.visual_tokens_after / before

    @property
    def retention_before_llm(self) -> float:
        """Frame tokens entering the LLM's first layer / all frame tokens (for presses acting before the LLM, the
        same as `retention`; FlashVID: its vision side)."""
        before = self.visual_tokens_before
        if not before:
            return 1.0
        return (self.layer_tokens[0] if self.layer_tokens else self.visual_tokens_after) / before


@dataclass
class VideoLayout:
    """One video's rows in the encoder output: T * M frame tokens first, then `extra` rows [E, D] that are
    always kept (e.g. LLaVA-OneVision's trailing newline token)."""

    tokens: VideoTokens
    extra: torch.Tensor | None = None

    @property
    def num_rows(self) -> int:
        return self.tokens.num_tokens + (0 if self.extra is None else self.extra.shape[0])


#: The registered adapters, in registration order: `@register_adapter` on each family's class fills it.
ADAPTERS: list[type[Adapter]] = []


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make an adapter serve the models whose `config.model_type` is in its `model_types`.

    A new model family is one file in vidpress/models/ with `@register_adapter` on its class, plus one import line
    in `models/__init__.py`.
    """
    taken = [t for a in ADAPTERS for t in a.model_types if t in cls.model_types and a is not cls]
    if not cls.model_types or taken:
        raise ValueError(f"{cls.__name__}: model_types must be non-empty and not served by another adapter; got "
                         f"{cls.model_types!r} ({', '.join(taken) or 'none'} already registered)")
    if cls not in ADAPTERS:
        ADAPTERS.append(cls)
    return cls


class Adapter:
    """Applies presses to one model family. Subclasses set `model_types` and the four layout hooks; the family
    facts below default to a plain model (1-D positions, no DeepStack, no pre-computed video inputs)."""

    model_types: tuple[str, ...] = ()
    family = ""
    #: first decoder layer before which tokens may be dropped inside the LLM
    min_prune_layer = 1
    #: True when the LLM numbers tokens with M-RoPE, 3 position rows (t, h, w); False: one row of 1-D positions
    mrope = False
    #: True when the vision encoder also feeds DeepStack features into the first LLM layers
    deepstack = False
    #: True when the model runs from pre-computed video features alone (`precomputed_video_inputs`)
    precomputed_videos = False

    def __init__(self, model):
        self.model = model
        self.config = model.config
        self.base = model.model  # the multimodal base model (vision tower + LLM), as in every supported family
        self.video_token_id = self.config.video_token_id
        self.image_token_id = getattr(self.config, "image_token_id", None)

    # -- family hooks -------------------------------------------------------------------------------------
    def video_layouts(self, output, inputs: dict) -> list[VideoLayout]:
        """Split `get_video_features` output into one VideoLayout per video, in input order."""
        raise NotImplementedError

    def pack_videos(self, output, kept_rows: list[torch.Tensor], kept_features: list[torch.Tensor]):
        """Encoder output holding only the kept rows ([K_v] indices, [K_v, D] features per video)."""
        raise NotImplementedError

    def full_position_ids(self, inputs: dict, attention_mask: torch.Tensor, for_generate: bool,
                          embeds_only: bool = False) -> torch.Tensor:
        """Positions the unmodified model would use for this call: [B, L] or [R, B, L]. `embeds_only`: the caller
        passed inputs_embeds without input_ids (inputs["input_ids"] then holds `placeholder_ids`)."""
        raise NotImplementedError

    def finish_position_ids(self, position_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Adjust sliced positions [.., B, L'] for the pruned sequence (default: unchanged)."""
        return position_ids

    def text_layers(self):
        """The LLM's decoder layers, in order."""
        return self.base.language_model.layers

    def text_norm(self) -> torch.nn.Module:
        """The LLM's final norm, which reads the last decoder layer's output."""
        return self.base.language_model.norm

    # -- vision-encoder statistics (presses with `needs_vision_stats`, e.g. VisionZip) ----------------------------
    def vision_attention(self, layer: int | None) -> torch.nn.Module:
        """The self-attention module of vision-encoder block `layer` (Python indexing; None: the family's default,
        the last block whose output the model uses)."""
        raise ValueError(f"{self.family}: vidpress cannot record attention statistics in this model's vision encoder")

    def vision_token_stats(self, recorder: VisionStatsRecorder, inputs: dict, layouts: list[VideoLayout]) -> list[dict]:
        """Map what `recorder` saw (per encoder token) to each video's LLM tokens, one dict per layout:
        "vision_attention" [T, M] (attention received) and "vision_keys" [T, M, d] (head-averaged keys)."""
        raise ValueError(f"{self.family}: vidpress cannot map vision-encoder statistics to this model's video tokens")

    # -- videos encoded once, used many times (training) ----------------------------------------------------
    def split_video_output(self, output) -> list[dict]:
        """`get_video_features` output -> one dict per video, in input order: "pooler_output", that video's rows
        ([N_v, D], or as the family holds them), plus the family's other per-video parts (Qwen3-VL:
        "deepstack_features"). `pack_video_output` puts such entries back together."""
        return [{"pooler_output": rows} for rows in output.pooler_output]

    def pack_video_output(self, like, entries: list[dict]):
        """An encoder output of `like`'s type and layout (a `get_video_features` output) holding `entries` (from
        `split_video_output`, of any videos, in order), to pass as `mm_encoder_outputs["video"]`."""
        pooled = [entry["pooler_output"] for entry in entries]
        # the family's own container: one tensor [V, N, D] of equal-length videos, or a tuple of [N_v, D]
        stacked = isinstance(like.pooler_output, torch.Tensor)
        return type(like)(pooler_output=torch.stack(pooled) if stacked else tuple(pooled))

    def check_precomputed_videos(self, purpose: str) -> None:
        """A ValueError naming this family and the families that do, unless the model runs from pre-computed video
        features (`precomputed_video_inputs`); `purpose` says what needs them, e.g. "C-GRPO training"."""
        if self.precomputed_videos:
            return

        supported = ", ".join(f"{a.family} ({'/'.join(a.model_types)})" for a in ADAPTERS if a.precomputed_videos)
        why = " (it also reads each video's DeepStack features)" if self.deepstack else ""
        raise ValueError(f"{purpose} feeds the model pre-computed video features, which vidpress supports for "
                         f"{supported} models; got a {self.family} model ({self.config.model_type}){why}")

    def precomputed_video_inputs(self, features: list[torch.Tensor], grids: torch.Tensor,
                                 seconds_per_grid: torch.Tensor | None, input_ids: torch.Tensor) -> dict:
        """Model kwargs standing in for the pixels of videos encoded beforehand, for a batch input_ids [B, L] whose
        row i holds video i: `features` one [N_i, D] block per video (`get_video_features` rows), `grids`
        LongTensor [B, 3] of their (t, h, w) patch grids, `seconds_per_grid` optional [B] seconds per temporal
        grid step. Implemented by the families with `precomputed_videos`; the others raise a ValueError."""
        self.check_precomputed_videos("building model inputs from pre-computed video features")
        raise NotImplementedError(f"{type(self).__name__} sets precomputed_videos but does not build the inputs")

    @property
    def placeholder_token_ids(self) -> list[int]:
        """Ids of the visual placeholder tokens, video then image (where the family has one)."""
        return [i for i in (self.video_token_id, self.image_token_id) if isinstance(i, int)]

    def patchify(self, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel inputs of videos [B, F, C, H, W] laid out as the family's video processor lays them out, without
        the processor; families whose layout vidpress knows override this."""
        raise ValueError(f"{self.family}: vidpress cannot lay out this model's pixel values itself; build the "
                         "inputs with the model's processor")

    # -- shared mechanism ---------------------------------------------------------------------------------
    def has_video(self, inputs: dict) -> bool:
        outputs = inputs.get("mm_encoder_outputs") or {}
        return inputs.get("pixel_values_videos") is not None or outputs.get("video") is not None

    def encode(self, modality: str, inputs: dict):
        """Run the model's own `get_<modality>_features` with the inputs it accepts, as `generate` does."""
        precomputed = (inputs.get("mm_encoder_outputs") or {}).get(modality)
        if precomputed is not None:
            return precomputed
        encoder = getattr(self.base, f"get_{modality}_features")
        names = [n for n in inspect.signature(encoder).parameters if n != "kwargs" and n in inputs]
        return encoder(**{n: inputs[n] for n in names}, return_dict=True)

    def press_inputs(self, press, inputs: dict, for_generate: bool) -> tuple[dict, PressReport]:
        """Return model kwargs with the press applied to every video, and a report of what was kept.

        Gradients flow as in the unpressed model when grad mode is on (the encoders run in the caller's mode);
        `inputs_embeds` [B, L, D] may stand in for `input_ids`, their placeholder rows found as the model finds them.
        """
        embeds = inputs.get("inputs_embeds")
        input_ids = inputs.get("input_ids")
        if input_ids is None:
            if embeds is None:
                raise ValueError("a pressed call needs input_ids or inputs_embeds (with the visual placeholder rows)")
            input_ids = self.placeholder_ids(embeds)
        B, L = input_ids.shape
        attention_mask = inputs.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        real = attention_mask.bool()

        # The encoders run as in the unpressed model: with gradients when the caller trains through the press.
        video_output, layouts = self.encode_videos(press, inputs)
        image_output = self.encode("image", inputs) if _has_images(inputs) else None

        # Feature rows fill the video placeholders in (batch, sequence) order.
        placeholder = (input_ids == self.video_token_id) & real
        flat_positions = placeholder.flatten().nonzero().squeeze(1)
        total_rows = sum(layout.num_rows for layout in layouts)
        if flat_positions.numel() != total_rows:
            raise ValueError(
                f"the prompt has {flat_positions.numel()} video placeholder tokens but the videos give {total_rows} "
                "features; build the inputs with the model's processor (one video entry per video in the text)"
            )

        position_ids = inputs.get("position_ids")
        if position_ids is None:
            position_ids = self.full_position_ids({**inputs, "input_ids": input_ids}, attention_mask, for_generate,
                                                  embeds_only=inputs.get("input_ids") is None)

        report = PressReport(sequence_length=(L, L))
        drop = torch.zeros(B * L, dtype=torch.bool, device=input_ids.device)
        kept_rows, kept_features = [], []
        offset = 0
        for layout in layouts:
            tokens = layout.tokens
            sample = int(flat_positions[offset]) // L
            frame_slots = flat_positions[offset : offset + tokens.num_tokens] % L
            query = (self.query(input_ids[sample], real[sample], position_ids[..., sample, :], frame_slots,
                                None if embeds is None else embeds[sample]) if press.query_aware else None)
            selection = press.select(tokens, query)
            keep = selection.keep_indices.to(input_ids.device)
            extra = torch.arange(tokens.num_tokens, layout.num_rows, device=input_ids.device)
            rows = torch.cat([keep, extra])
            frame_rows = torch.ones(tokens.num_tokens, dtype=torch.bool, device=input_ids.device)
            frame_rows[keep] = False
            drop[flat_positions[offset : offset + tokens.num_tokens][frame_rows]] = True
            features = tokens.features.reshape(tokens.num_tokens, -1)
            kept = selection.features if selection.features is not None else features[selection.keep_indices]
            kept = kept.to(features.dtype)
            if layout.extra is not None:
                kept = torch.cat([kept, layout.extra])
            kept_rows.append(rows)
            kept_features.append(kept)
            report.selections.append(selection)
            report.videos.append(tokens)
            report.sample_of_video.append(sample)
            report.extra_tokens.append(layout.num_rows - tokens.num_tokens)
            offset += layout.num_rows

        keep_mask = real & ~drop.view(B, L)
        left = not bool((~real[:, -1]).any())  # keep right padding only where the caller used it
        gather, valid = _repad_index(keep_mask, left)
        pad_id = _pad_token_id(self.model)
        out = {k: v for k, v in inputs.items() if k not in PIXEL_INPUTS and k != "position_ids"}
        for name, pad in SEQUENCE_INPUTS.items():
            if name == "attention_mask":
                out[name] = valid.long()
            elif inputs.get(name) is not None:
                value = pad_id if pad is None else pad
                out[name] = inputs[name].gather(-1, gather).masked_fill(~valid, value)
        if embeds is not None:
            out["inputs_embeds"] = (embeds.gather(1, gather[..., None].expand(-1, -1, embeds.shape[-1]))
                                    * valid[..., None])
        report.input_ids = input_ids.gather(-1, gather).masked_fill(~valid, pad_id)
        position_ids = position_ids.gather(-1, gather.expand(*position_ids.shape[:-2], -1, -1)).masked_fill(~valid, 0)
        out["position_ids"] = self.finish_position_ids(position_ids, out["attention_mask"])
        encoder_outputs = {"video": self.pack_videos(video_output, kept_rows, kept_features)}
        if image_output is not None:
            encoder_outputs["image"] = image_output
        out["mm_encoder_outputs"] = encoder_outputs
        report.sequence_length = (L, gather.shape[1])
        return out, report

    def encode_videos(self, press, inputs: dict) -> tuple[object, list[VideoLayout]]:
        """`get_video_features` output and its VideoLayouts. For a press with `needs_vision_stats` (below retention
        1), every video's VideoTokens also get the side features "vision_attention" [T, M] and "vision_keys"
        [T, M, d] of vision block `press.vision_layer`: recorded while the encoder runs (`encode_with_vision_stats`),
        or taken from pre-computed `mm_encoder_outputs["video"]` that this method produced."""
        if not press.needs_vision_stats or press.retention >= 1.0:
            output = self.encode("video", inputs)
            return output, self.video_layouts(output, inputs)
        layer = press.vision_layer
        output = (inputs.get("mm_encoder_outputs") or {}).get("video")
        if output is None:
            output = self.encode_with_vision_stats(inputs, layer)
        elif layer not in getattr(output, "vidpress_vision_stats", {}):
            raise ValueError(
                f"{type(press).__name__} needs statistics recorded inside the vision encoder "
                f"(block {'default' if layer is None else layer}) while it "
                "encodes the video, and these pre-computed mm_encoder_outputs carry none: pass the pixel values, or "
                "encode with get_adapter(model).encode_with_vision_stats(inputs, vision_layer)"
            )
        layouts = self.video_layouts(output, inputs)
        for layout, stats in zip(layouts, output.vidpress_vision_stats[layer], strict=True):
            layout.tokens.side_features.update(stats)
        return output, layouts

    def encode_with_vision_stats(self, inputs: dict, layer: int | None = None):
        """Run the model's own `get_video_features` with a `VisionStatsRecorder` on vision block `layer` (None: the
        family's default) and return its output with `vidpress_vision_stats[layer]` attached: per video, the
        side features "vision_attention" [T, M] and "vision_keys" [T, M, d]. The output can be passed as
        pre-computed `mm_encoder_outputs["video"]` to presses that need these statistics."""
        inputs = {k: v for k, v in inputs.items() if k != "mm_encoder_outputs"}
        with VisionStatsRecorder(self.vision_attention(layer)) as recorder:
            output = self.encode("video", inputs)
        layouts = self.video_layouts(output, inputs)
        stats = self.vision_token_stats(recorder, inputs, layouts)
        for layout, video_stats in zip(layouts, stats, strict=True):
            T, M = layout.tokens.num_frames, layout.tokens.tokens_per_frame
            for name, value in video_stats.items():
                if value.shape[:2] != (T, M):
                    raise RuntimeError(f"vidpress: {self.family} gave {name} of shape {tuple(value.shape)} "
                                       f"for a video of [{T}, {M}] tokens")
        output.vidpress_vision_stats = {**getattr(output, "vidpress_vision_stats", {}), layer: stats}
        return output

    def query(self, input_ids: torch.Tensor, real: torch.Tensor, position_ids: torch.Tensor | None = None,
              video_slots: torch.Tensor | None = None, embeds: torch.Tensor | None = None) -> Query:
        """The sample's text tokens (no visual placeholders, no padding), their embeddings ([L] ids, [L, D] rows;
        `embeds` [L_all, D]: the caller's inputs_embeds, used instead of the embedding table), and `question_mask`
        over them: the user's question, i.e. the text after the last visual token (placeholder or vision-end
        token) up to the next end-of-turn token (the model's EOS ids, e.g. <|im_end|>), which leaves out the system
        prompt, role tags and generation prompt. Templates without an end-of-turn token run to the prompt's end;
        with no text after the video (the question came first) the mask covers every text token.
        With the sample's full-sequence `position_ids` ([L] or [R, L]) and one video's frame-token slots
        `video_slots` [N], the Query also carries the positions of its text and of that video's tokens and where
        the video sits among the text."""
        visual = input_ids == self.video_token_id
        if self.image_token_id is not None:
            visual |= input_ids == self.image_token_id
        text = real & ~visual
        ids = input_ids[text]
        with torch.no_grad():
            embeddings = self.model.get_input_embeddings()(ids) if embeds is None else embeds[text].detach()
        query = Query(token_ids=ids, embeddings=embeddings,
                      question_mask=self._question_mask(input_ids, real, visual)[text])
        if position_ids is not None and video_slots is not None and video_slots.numel():
            query.position_ids = position_ids[..., text]
            query.video_position_ids = position_ids[..., video_slots]
            query.video_offset = int(text[: int(video_slots.min())].sum())
        return query

    def _question_mask(self, input_ids: torch.Tensor, real: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """[L] bool: the question's tokens of one sample (see `query`)."""
        vision_end = getattr(self.config, "vision_end_token_id", None)
        boundary = visual | (input_ids == vision_end) if vision_end is not None else visual
        positions = torch.arange(input_ids.shape[0], device=input_ids.device)
        start = int(positions[boundary & real].max()) + 1 if bool((boundary & real).any()) else 0
        ends = torch.isin(input_ids,
                          torch.tensor(self._end_of_turn_ids(), dtype=input_ids.dtype, device=input_ids.device))
        ends &= real & (positions >= start)
        end = int(positions[ends].min()) if bool(ends.any()) else input_ids.shape[0]
        mask = real & ~visual & (positions >= start) & (positions < end)
        return mask if bool(mask.any()) else real & ~visual

    def _end_of_turn_ids(self) -> list[int]:
        ids = []
        for source in (getattr(self.model, "generation_config", None), self.config, self.config.get_text_config()):
            eos = getattr(source, "eos_token_id", None) if source is not None else None
            ids += [eos] if isinstance(eos, int) else list(eos or [])
        return sorted(set(ids))

    def placeholder_ids(self, embeds: torch.Tensor) -> torch.Tensor:
        """[B, L] ids for inputs_embeds [B, L, D]: the visual placeholder ids where a row equals that token's
        embedding (the model's own test), the pad id elsewhere."""
        table = self.model.get_input_embeddings()
        ids = torch.full(embeds.shape[:2], _pad_token_id(self.model), dtype=torch.long, device=embeds.device)
        for token in (self.image_token_id, self.video_token_id):
            if token is not None:
                row = table(torch.tensor(token, device=embeds.device)).to(embeds.dtype)
                ids[(embeds == row).all(-1)] = token
        return ids


def pick_block(blocks, layer: int, family: str):
    """blocks[layer] with Python indexing, or a ValueError naming the valid range."""
    n = len(blocks)
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n:
        raise ValueError(f"vision_layer must be an integer in [{-n}, {n - 1}] for this {family} vision encoder "
                         f"({n} blocks); got {layer!r}")
    return blocks[layer]


def _has_images(inputs: dict) -> bool:
    return inputs.get("pixel_values") is not None or (inputs.get("mm_encoder_outputs") or {}).get("image") is not None


def _repad_index(keep: torch.Tensor, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """For a keep mask [B, L], the gather index [B, L'] of kept positions (order kept) and the valid mask [B, L'].

    Rows are padded to L' = max kept count, on the left (generation) or on the right.
    """
    B, L = keep.shape
    lengths = keep.sum(1)
    new_length = int(lengths.max())
    # A stable sort brings kept positions to the front of each row, in their original order.
    order = torch.sort(keep.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :new_length]
    slots = torch.arange(new_length, device=keep.device).expand(B, -1)
    if left:
        shift = (new_length - lengths)[:, None]
        valid = slots >= shift
        order = order.gather(1, (slots - shift).clamp(min=0))
    else:
        valid = slots < lengths[:, None]
    return order, valid


def _pad_token_id(model) -> int:
    for source in (getattr(model, "generation_config", None), model.config, getattr(model.config, "text_config", None)):
        pad = getattr(source, "pad_token_id", None) if source is not None else None
        if isinstance(pad, int):
            return pad
    return 0
