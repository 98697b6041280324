"""vLLM's Qwen2.5-VL and Qwen3-VL model classes with a vidpress press at their video-pruning step.

Registered by `vidpress.serving.vllm.register_plugin` (the `vllm.general_plugins` entry point); select one with
`--hf-overrides '{"architectures": ["VidpressQwen2_5_VLForConditionalGeneration"]}'` (or the Qwen3-VL name).
Each class replaces one method of vLLM's own class, `_postprocess_video_embeds_evs`, which receives every video's
encoder output and returns the kept rows with their original M-RoPE positions appended (vLLM's runner strips those
channels and places the rows). Everything else is vLLM's code, unchanged. Requires vLLM 0.32.
"""

from __future__ import annotations

import hashlib
import time

import torch
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalBatchedField, MultiModalFieldElem
from vllm.multimodal.video_prune import evs, vidcom2

from vidpress.serving.encoder_reuse import encode_with_reuse
from vidpress.serving.vllm import check_family, check_qwen3_media, press_from_config, select_exact, vllm_logger
from vidpress.serving.vllm_positions import MediaItem, place_media_positions, prompt_positions
from vidpress.serving.vllm_query import FIELDS, end_of_turn_ids, query_from_fields, qwen2_5_vl_video_queries
from vidpress.types import VideoTokens


def _serving_press(vllm_config, with_query: bool = False):
    """The press of `--additional-config` for this model (ValueError naming what is accepted), built before vLLM
    builds any part of the model so that a wrong family or press fails first and clearly."""
    return press_from_config(
        vllm_config.additional_config,
        vllm_config.model_config.hf_config.model_type,
        vllm_config.model_config.get_multimodal_config().video_pruning_rate,
        with_query=with_query,
    )


def _keep_mask(model, features: torch.Tensor, grid: tuple[int, int, int], count: int, side=None, query=None):
    """Run the press on one video's rows [T*M, D] with grid (T, h, w), h * w = M: (keep mask [T*M] bool, kept rows
    [count, D], merged for merging presses). `side`: per-token side features {name: [T*M, d]}, as the transformers
    path gives them to the press (Qwen3-VL: "deepstack.0", ...)."""
    T, h, w = grid
    side = {name: rows.reshape(T, h * w, -1) for name, rows in (side or {}).items()}
    tokens = VideoTokens(features.reshape(T, h * w, -1), (T, h, w), side_features=side)
    start = time.perf_counter()
    keep, kept = select_exact(model.vidpress.press, tokens, count, query)
    _log_video(model, grid, count, time.perf_counter() - start)
    mask = torch.zeros(T * h * w, dtype=torch.bool, device=features.device)
    mask[keep.to(features.device)] = True
    return mask, kept.to(features.device, features.dtype)


def _log_video(model, grid, count: int, seconds: float) -> None:
    """One INFO line per pruned video in the worker's log: the press, kept / total video tokens, the press's time
    (wall clock around `select_exact`, which waits for the kept count, so device work is included)."""
    T, h, w = grid
    vllm_logger.info("vidpress: %s kept %d of %d video tokens (grid %dx%dx%d) in %.1f ms",
                     type(model.vidpress.press).name, count, T * h * w, T, h, w, seconds * 1e3)


# vLLM's own processors, behind a family check: a model of another family fails in the first process that reads
# its config (the API server) with the vidpress message instead of vLLM's config type error.
class _Qwen2_5_VLInfo(Qwen2_5_VLProcessingInfo):
    def get_hf_config(self):
        check_family(self.ctx.model_config.hf_config.model_type, "VidpressQwen2_5_VLForConditionalGeneration")
        return super().get_hf_config()


class _Qwen3VLInfo(Qwen3VLProcessingInfo):
    def get_hf_config(self):
        check_family(self.ctx.model_config.hf_config.model_type, "VidpressQwen3VLForConditionalGeneration")
        return super().get_hf_config()


class _PressedVideo:
    """Reads the press from vLLM's config before the model is built (a bad press fails at load). vLLM's loader
    looks for `vllm_config` and `prefix` in the signature, so both stay named; `default_prefix` is the family's."""

    default_prefix = ""
    vidpress_with_query = False  # True: the processor hands each video its question (query-aware presses run)

    def _vidpress_query(self, video_index: int):
        """The Query of video `video_index` of the current encoder batch (None: this class passes no question)."""
        return None

    def __init__(self, *, vllm_config, prefix: str | None = None):
        serving = _serving_press(vllm_config, self.vidpress_with_query)
        super().__init__(vllm_config=vllm_config, prefix=self.default_prefix if prefix is None else prefix)
        self.vidpress = serving
        self.vidpress_last_keep: list[torch.Tensor] = []  # kept indices [K] per video of the latest encoder batch


class _ReusedEncoder:
    """Encoder reuse (`"encoder_reuse_threshold"` in the vidpress settings; `vidpress.serving.encoder_reuse`): the
    vision tower encodes only the temporal groups whose pixels changed; the others take their reference group's
    features. Off (vLLM's own `_process_video_input`) without the setting, for precomputed embeddings and with
    the data-parallel vision tower."""

    def _process_video_input(self, video_input):
        """Per video: encoder rows [T*M, D] (Qwen3-VL: main features then DeepStack levels), reused groups'
        rows copied from their reference group; `vidpress_last_reuse` keeps each video's source groups [T]."""
        threshold = self.vidpress.encoder_reuse_threshold
        if threshold is None or video_input["type"] != "pixel_values_videos" or self.use_data_parallel:
            self.vidpress_last_reuse = []
            return super()._process_video_input(video_input)
        pixels = video_input["pixel_values_videos"]
        # vLLM may hand the tower raw uint8 rows that it normalises itself; the threshold is in normalised units
        normalized = self.visual.input_norm(pixels, torch.float32)
        features, plans = encode_with_reuse(
            lambda rows, sizes: self.visual(rows, grid_thw=sizes),
            pixels,
            video_input["video_grid_thw"].tolist(),
            self.visual.spatial_merge_size,
            threshold,
            normalized,
        )
        self.vidpress_last_reuse = plans
        return features


class _TransformersPositions:
    """Qwen2.5-VL's M-RoPE positions for prompts with pruned videos, any number and order of images and videos
    (`vidpress.serving.vllm_positions`): vLLM 0.32's own computation fails on a second media item after a pruned
    video, which ends the engine."""

    def get_mrope_input_positions(self, input_tokens, mm_features):
        """Positions [3, N] before the encoder runs (text final, a pruned video's slots at its start) and delta."""
        merge = self.config.vision_config.spatial_merge_size
        tokens_per_second = getattr(self.config.vision_config, "tokens_per_second", 1.0)
        items = []
        for feature in mm_features:
            if feature.modality not in ("image", "video"):
                raise ValueError(f"vidpress: unsupported modality {feature.modality!r} in a Qwen2.5-VL prompt")
            t, h, w = feature.data[f"{feature.modality}_grid_thw"].data.tolist()
            interval = 1.0
            if feature.modality == "video":
                seconds = feature.data.get("second_per_grid_ts")
                interval = tokens_per_second * (float(seconds.data.item()) if seconds is not None else 1.0)
            position = feature.mm_position
            items.append(MediaItem(position.offset, position.length, (t, h // merge, w // merge), interval))
        return prompt_positions(len(input_tokens), items)

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens):
        """After a chunk's media embeddings exist: strip their 4 position channels (t, h, w, unused) and write the
        kept tokens' positions into the prompt's; text positions are already final."""
        ids = torch.as_tensor(input_ids, dtype=torch.long)
        embeddings = [mm[:, :-4] for mm in multimodal_embeddings]
        rows = [mm[:, -4:-1].T.long() for mm in multimodal_embeddings]
        positions, delta = place_media_positions(
            mrope_positions, ids, rows, num_computed_tokens, (self.config.image_token_id, self.config.video_token_id))
        return embeddings, positions, delta


@MULTIMODAL_REGISTRY.register_processor(
    Qwen2_5_VLMultiModalProcessor, info=_Qwen2_5_VLInfo, dummy_inputs=Qwen2_5_VLDummyInputsBuilder
)
class VidpressQwen2_5_VLForConditionalGeneration(_TransformersPositions, _PressedVideo, _ReusedEncoder,
                                                 Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL in vLLM with a vidpress press choosing the kept video tokens (count: vLLM's EVS contract)."""

    def _postprocess_video_embeds_evs(self, video_embeds_split, video_input):
        """Per video: rows [T*M, D] -> kept rows [K, D + 4], K = vLLM's EVS count; the 4 appended channels are the
        kept tokens' original (t, h, w) positions (as if the video started at 0) and the position step to the text
        after the video."""
        merge = self.visual.spatial_merge_size
        tokens_per_second = self.config.vision_config.tokens_per_second
        seconds = video_input.get("second_per_grid_ts")
        out, keeps = [], []
        for v, (emb, (t, h, w)) in enumerate(zip(video_embeds_split, video_input["video_grid_thw"].tolist())):
            rows, cols = h // merge, w // merge
            count = evs.compute_retained_tokens_count(rows * cols, t, self.video_pruning_rate)
            mask, kept = _keep_mask(self, emb, (t, rows, cols), count, query=self._vidpress_query(v))
            # vLLM's own step casts seconds-per-grid to an integer first (0 for fps > 2 with temporal patch 2);
            # transformers multiplies by the float, so positions follow transformers here.
            second = 1.0 if seconds is None else float(seconds[v])
            positions = evs.compute_mrope_for_media((t, h, w), merge, tokens_per_second, second)
            # Channel 3 (vLLM's step to the text after the video) is not read: `_TransformersPositions` places the
            # text as transformers does; kept equal to that step, max(rows, cols), for any reader of the channels.
            positions[:, 3] = max(rows, cols)
            out.append(torch.cat([kept, positions.to(emb.device)[mask].to(kept.dtype)], dim=1))
            keeps.append(mask.nonzero().squeeze(1))
        self.vidpress_last_keep = keeps
        return tuple(out)


class _Qwen3VLProcessor(Qwen3VLMultiModalProcessor):
    """vLLM's Qwen3-VL processor, refusing a video with any other image or video in the same prompt (ValueError in
    the API server: HTTP 400 for that request) instead of letting vLLM 0.32's position recomputation end the
    engine (`check_qwen3_media`). vLLM's own start-up profiling, which combines one item of each modality, is let
    through."""

    _profiling = False

    def get_dummy_mm_inputs(self, *args, **kwargs):
        self._profiling = True
        try:
            return super().get_dummy_mm_inputs(*args, **kwargs)
        finally:
            self._profiling = False

    def apply(self, inputs, *args, **kwargs):
        if not self._profiling:
            check_qwen3_media(inputs.mm_data_items.get_all_counts())
        return super().apply(inputs, *args, **kwargs)


@MULTIMODAL_REGISTRY.register_processor(
    _Qwen3VLProcessor, info=_Qwen3VLInfo, dummy_inputs=Qwen3VLDummyInputsBuilder
)
class VidpressQwen3VLForConditionalGeneration(_PressedVideo, _ReusedEncoder, Qwen3VLForConditionalGeneration):
    """Qwen3-VL in vLLM with a vidpress press choosing the kept video tokens (count: vLLM's EVS or VidCom2 contract,
    by --video-pruning-method). DeepStack features of kept tokens are kept with them."""

    default_prefix = "model"  # vLLM's Qwen3-VL default

    def _postprocess_video_embeds_evs(self, video_embeds_split, video_input):
        """Per video: rows [T*M, D * (1 + levels)] (main features, then DeepStack levels) -> the video's final rows
        (timestamps, frame markers and kept tokens with position channels), built by vLLM's own
        `_create_final_video_embeddings` from the press's keep mask."""
        merge = self.visual.spatial_merge_size
        count_fn = (vidcom2 if self.video_pruning_method == "vidcom2" else evs).compute_retained_tokens_count
        out, keeps = [], []
        for v, (emb, size) in enumerate(zip(video_embeds_split, video_input["video_grid_thw"].tolist())):
            t, h, w = size
            rows, cols = h // merge, w // merge
            count = count_fn(tokens_per_frame=rows * cols, num_frames=t, q=self.video_pruning_rate)
            if self.vidpress.score_deepstack:
                # what vLLM's own EVS / VidCom2 score: main and DeepStack features together; merges apply to both
                mask, kept = _keep_mask(self, emb, (t, rows, cols), count)
            else:
                # what transformers' model gives a press: the main features, the DeepStack levels as side features
                # (read by presses that score them, e.g. evs); DeepStack rows follow the keep mask
                levels = emb[:, self.visual_dim :].split(self.visual_dim, dim=1)
                side = {f"deepstack.{i}": level_rows for i, level_rows in enumerate(levels)}
                mask, main = _keep_mask(self, emb[:, : self.visual_dim], (t, rows, cols), count, side)
                kept = torch.cat([main, emb[mask][:, self.visual_dim :]], dim=1)
            out.append(
                self._create_final_video_embeddings(
                    video_embeddings=kept,
                    num_tokens_per_frame=mask.view(t, -1).sum(1).tolist(),
                    timestamps=video_input.timestamps[v],
                    video_grid_thw=size,
                    retention_mask=mask,
                )
            )
            keeps.append(mask.nonzero().squeeze(1))
        self.vidpress_last_keep = keeps
        return tuple(out)

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens):
        """vLLM's position recomputation with outer video markers hidden.

        transformers >= 5.10 expands only <|video_pad|> of "<|vision_start|><|video_pad|><|vision_end|>", so the
        prompt keeps an outer <|vision_start|> before the first frame's timestamp. vLLM 0.32 takes the first
        <|vision_start|> at or after the current chunk for the video's own and writes the video's positions one
        timestamp too early. Here such an outer marker (a <|vision_start|> followed by neither a placeholder nor
        <|vision_end|>) is replaced by -1 in the ids vLLM's recomputation reads; it stays a plain text token.
        """
        ids = torch.as_tensor(input_ids, dtype=torch.long)
        start = self.config.vision_start_token_id
        follows = torch.cat([ids[1:], ids.new_full((1,), -1)])
        inner = (follows == self.config.video_token_id) | (follows == self.config.image_token_id)
        inner |= follows == self.config.vision_end_token_id
        outer = (ids == start) & ~inner
        if bool(outer.any()):
            ids = ids.masked_fill(outer, -1)
            input_ids = ids.to(input_ids.device) if isinstance(input_ids, torch.Tensor) else ids.tolist()
        return super().recompute_mrope_positions(input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens)


# -- query-aware presses (CaCoVID): the question reaches the pruning step ------------------------------------
class _QueryQwen2_5_VLProcessor(Qwen2_5_VLMultiModalProcessor):
    """vLLM's Qwen2.5-VL processor that also hands every video its prompt's question (`vidpress.serving.vllm_query`
    fields) and makes the prompt part of every item's cache identity: vLLM caches processed items and encoder
    outputs (here: the pruned tokens) by that identity, and a query-aware press keeps different tokens of the same
    video for a different question."""

    def _get_mm_hashes(self, inputs):
        hashes = super()._get_mm_hashes(inputs)
        prompt = hashlib.sha256(torch.tensor(list(inputs.prompt), dtype=torch.long).numpy().tobytes()).hexdigest()
        return {modality: [f"{item}-vidpress-{prompt}" for item in items] for modality, items in hashes.items()}

    def apply(self, inputs, timing_ctx):
        result = super().apply(inputs, timing_ctx)
        videos = result["mm_kwargs"].get("video", [])
        if not videos or all(item is None for item in videos):
            return result  # no video, or every video already cached with this very prompt (see _get_mm_hashes)

        def grids(modality, key):
            items = result["mm_kwargs"].get(modality, [])
            if any(item is None for item in items):
                raise RuntimeError("vidpress: part of this prompt's media came from vLLM's processor cache without its "
                                   "sizes; serve query-aware presses with --mm-processor-cache-gb 0")
            return [tuple(item[key].data.tolist()) for item in items]

        config = self.info.get_hf_config()
        vision = config.vision_config
        seconds = [float(item["second_per_grid_ts"].data) if "second_per_grid_ts" in item else 1.0
                   for item in videos]
        end_of_turn = end_of_turn_ids(config, self.info.ctx.model_config.try_get_generation_config())
        queries = qwen2_5_vl_video_queries(
            list(inputs.prompt), config.video_token_id, config.image_token_id, config.vision_end_token_id,
            end_of_turn, grids("video", "video_grid_thw"), grids("image", "image_grid_thw"), seconds,
            vision.spatial_merge_size, vision.tokens_per_second)
        field = MultiModalBatchedField()
        for item, fields in zip(videos, queries, strict=True):
            for name, value in fields.items():
                item[name] = MultiModalFieldElem(data=value, field=field)
        return result


class _PolicyFromFolder:
    """What `Press.post_init_from_model` reads of a model (its config and device), for vLLM's model classes."""

    def __init__(self, config, device):
        self.config, self.device = config, device


@MULTIMODAL_REGISTRY.register_processor(
    _QueryQwen2_5_VLProcessor, info=_Qwen2_5_VLInfo, dummy_inputs=Qwen2_5_VLDummyInputsBuilder
)
class VidpressQueryQwen2_5_VLForConditionalGeneration(VidpressQwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL in vLLM with a query-aware press (CaCoVID) or any other: every video's press sees the
    prompt's question, as in `with press(model)` (the same `Query`: text ids and embeddings, positions over the
    unpruned sequence, question mask). The count is vLLM's EVS contract, as for the plain class. A press that needs
    a trained policy loads it once per worker from its `policy` folder, onto the model's device."""

    vidpress_with_query = True

    def __init__(self, *, vllm_config, prefix: str | None = None):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.vidpress_queries: list = []  # per video of the current encoder batch: its Query
        device = torch.device(vllm_config.device_config.device)
        self.vidpress.press.post_init_from_model(_PolicyFromFolder(self.config, device))

    def embed_multimodal(self, **kwargs):
        text, video = (kwargs.pop(name, None) for name in FIELDS)
        self.vidpress_queries = []
        if text is not None and video is not None:
            embed = self.get_language_model().embed_input_ids
            self.vidpress_queries = [query_from_fields(t, v, embed) for t, v in zip(text, video, strict=True)]
        elif self.vidpress.press.query_aware and kwargs.get("video_grid_thw") is not None:
            raise RuntimeError("vidpress: the videos reached the model without their question; serve this "
                               "architecture with vLLM's multimodal processor (not pre-computed embeddings)")
        return super().embed_multimodal(**kwargs)

    def _vidpress_query(self, video_index: int):
        return self.vidpress_queries[video_index] if self.vidpress_queries else None

