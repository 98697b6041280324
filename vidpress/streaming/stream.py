"""`VideoStream`: answer questions about a live video from one KV cache with a bounded visual memory.

Each chunk of frames is encoded alone by the model's own vision path, pressed (any press acting before the LLM),
and prefilled on top of the stream's cache (a transformers `DynamicCache`); a question is prefilled after the
cache, answered greedily, then cropped away, so the stream continues exactly as before it. When the visual tokens
would pass `memory_tokens`, a memory policy (`vidpress.streaming.memory`) picks cache entries to evict.

Evicting from the middle of the cache keeps every remaining key's position: keys are stored after the rotary
embedding was applied (RoPE / M-RoPE rotate q and k before the cache update), so a cached key carries its position
in its values; removing other rows of the key/value tensors [B, H, S, d] changes no kept row. New tokens then get
explicit positions (the stream's own counter) while their cache slots are renumbered densely; the attention mask
covers the slots, the positions the rotation. Tested: logits after an eviction equal an offline forward over the
kept tokens at their original positions.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from vidpress.inputs import frames_metadata
from vidpress.models import get_adapter
from vidpress.presses import get as get_press
from vidpress.presses.base import Press
from vidpress.presses.stc import STCPress
from vidpress.streaming.layout import PositionLayout, StreamTemplate
from vidpress.streaming.memory import MemoryView, build_policy
from vidpress.streaming.stc import STCEncoderCache

# What each cache slot holds.
PREFIX, VISUAL, CHUNK_TEXT = 0, 1, 2
STAGES = ("encode", "press", "evict", "prefill", "ask")


class _Clock:
    """Wall ms since the last `lap` (CUDA work finished first, so a stage is charged its own kernels)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.last = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self) -> float:
        now = self._now()
        elapsed, self.last = (now - self.last) * 1000, now
        return elapsed


@dataclass
class ChunkRecord:
    """One appended chunk: its id, frames [start, end) of the stream, the kept token ids [L] and positions [R, L]
    as prefilled, its kept encoder output `packed` (the model's `mm_encoder_outputs["video"]`, for recall) and the
    stream token index of each kept visual token `origins` [K] (see `VideoStream.visual_origin`)."""

    index: int
    frames: tuple[int, int]
    seconds: tuple[float, float]
    input_ids: torch.Tensor
    positions: torch.Tensor
    packed: object
    grid: torch.Tensor
    origins: torch.Tensor


@dataclass
class StreamStats:
    """What a stream did so far (`VideoStream.stats()`)."""

    chunks: int = 0
    frames: int = 0
    visual_tokens_in_memory: int = 0
    cache_tokens: int = 0
    visual_tokens_seen: int = 0
    visual_tokens_pressed_out: int = 0
    visual_tokens_evicted: int = 0
    encoder_work_saved: float = 0.0
    #: the latest chunks' wall times (a bounded window, so a stream's state stays constant-size)
    ms_per_chunk: deque = field(default_factory=lambda: deque(maxlen=1000))
    #: the same window per stage: "encode" (vision encoder, STC's cache included), "press", "evict" (0 when
    #: nothing left), "prefill" (appending the kept tokens to the cache), and "ask" (one question, end to end)
    stage_ms: dict = field(default_factory=lambda: {stage: deque(maxlen=1000) for stage in STAGES})
    questions: int = 0

    def as_dict(self) -> dict:
        ms = self.ms_per_chunk
        return {
            "chunks": self.chunks, "frames": self.frames, "visual_tokens_in_memory": self.visual_tokens_in_memory,
            "cache_tokens": self.cache_tokens, "visual_tokens_seen": self.visual_tokens_seen,
            "visual_tokens_pressed_out": self.visual_tokens_pressed_out,
            "visual_tokens_evicted": self.visual_tokens_evicted, "encoder_work_saved": self.encoder_work_saved,
            "ms_per_chunk_median": float(np.median(list(ms))) if ms else None,  # over the last 1000 chunks
            "ms_per_chunk_last": ms[-1] if ms else None, "questions": self.questions,
            "stage_ms_median": {stage: float(np.median(list(v))) if v else None for stage, v in self.stage_ms.items()},
        }


class VideoStream:
    """A live video answered from one KV cache.

    Args:
        model: a *ForConditionalGeneration Video LLM of a family `vidpress.models` supports; processor: its processor.
        press: None (keep every token), a press name (built at `retention`) or a `Press` acting before the LLM,
            applied to each chunk alone; "stc" also turns on STC's encoder cache (`vidpress.streaming.stc`).
        memory_tokens: hard cap on the visual tokens in the cache (None: unbounded). Checked before every prefill.
        policy: what leaves when a chunk would pass the cap: "fifo", "uniqueness" (VidCom²-style over the whole
            memory), "stc" (STC's pruner memory) or "recall" (FIFO, evicted chunks indexed for MARC-style recall);
            default "stc" with press="stc", else "fifo".
        retention: the press's retention when `press` is a name (None: the press's own default; STC's is the
            released 60/196).
        encoder_cache: run STC's encoder cache (`vidpress.streaming.stc`); None: with the STC press.
        recall_clips: clips a question brings back under policy="recall".
        system: an optional system prompt.

    `append(frames, timestamps)` takes uint8 [F, H, W, 3] frames and their [F] timestamps in seconds (increasing,
    across chunks too). Families that merge frames in time (Qwen: temporal_patch_size 2) take whole groups: frames
    left over are held until the next chunk completes the group.
    """

    def __init__(self, model, processor, press: str | Press | None = None, memory_tokens: int | None = None,
                 policy: str | None = None, retention: float | None = None, recall_clips: int = 2,
                 encoder_cache: bool | None = None, system: str | None = None):
        self.model, self.processor = model, processor
        self.adapter = get_adapter(model)
        self.press = self._build_press(press, retention)
        if memory_tokens is not None and (isinstance(memory_tokens, bool) or not isinstance(memory_tokens, int)
                                          or memory_tokens < 1):
            raise ValueError(f"memory_tokens must be a positive integer or None (unbounded); got {memory_tokens!r}")
        self.memory_tokens = memory_tokens
        stc = isinstance(self.press, STCPress)
        self.policy = build_policy(policy or ("stc" if stc else "fifo"), model=model, processor=processor,
                                   recall_clips=recall_clips)
        self.template = StreamTemplate.from_processor(processor, system)
        self.temporal_patch = int(getattr(model.config.vision_config, "temporal_patch_size", 1) or 1)
        self.encoder_cache = None
        if encoder_cache or (encoder_cache is None and stc):
            self.encoder_cache = STCEncoderCache.for_model(self.adapter)
            if self.encoder_cache is not None and self.press is not None and self.press.needs_vision_stats:
                raise ValueError(f"STC's encoder cache returns no vision attention, which {self.press.name} reads; "
                                 "pass encoder_cache=False")
        self.reset()

    # -- construction ---------------------------------------------------------------------------------------
    @staticmethod
    def _build_press(press, retention: float | None) -> Press | None:
        if press is None:
            return None
        if isinstance(press, str):
            press = get_press(press) if retention is None else get_press(press, retention=retention)
        return VideoStream.check_press(press)

    @staticmethod
    def check_press(press: Press) -> Press:
        """`press` if a stream can apply it to each chunk (a query-agnostic press acting before the LLM), else a
        ValueError saying why not."""
        if not isinstance(press, Press):
            raise ValueError(f"press must be None, a press name or a Press; got {type(press).__name__}")
        if press.acts_in_llm or press.query_aware or press.needs_policy:
            why = ("acts inside the LLM" if press.acts_in_llm else "reads the question" if press.query_aware
                   else "needs a trained policy")
            raise ValueError(f"a stream presses each chunk before the LLM, before any question exists; {press.name} "
                             f"{why}. Use a query-agnostic press acting before the LLM (e.g. stc, vidcom2, divprune)")
        return press

    def reset(self) -> None:
        """Forget everything: an empty cache holding the prompt's prefix."""
        self.cache = DynamicCache()
        self.layout = PositionLayout(self.adapter, len(self.template.prefix_ids))
        self.slot_kind = torch.empty(0, dtype=torch.long)
        self.slot_ids = torch.empty(0, dtype=torch.long)
        self.slot_chunk = torch.empty(0, dtype=torch.long)
        self.slot_positions = torch.empty(self.layout.rows, 0, dtype=torch.long)
        self.visual_features = torch.empty(0, 0)  # [N, D] the cached visual tokens' features, in slot order
        self.visual_frame = torch.empty(0, dtype=torch.long)  # [N] stream frame (temporal group) of each
        # [N] stream token index of each: group * tokens_per_frame + index in its frame (-1: not a grid token, e.g.
        # LLaVA-OneVision's newline), so what a memory holds can be compared with where the evidence was
        self.visual_origin = torch.empty(0, dtype=torch.long)
        self.last_question_origins = torch.empty(0, dtype=torch.long)
        self.chunks: dict[int, ChunkRecord] = {}
        self.pending_frames: list[np.ndarray] = []
        self.pending_seconds: list[float] = []
        self.first_second: float | None = None
        self.last_second: float | None = None
        self.frames_seen = 0
        self.groups_seen = 0
        self._stats = StreamStats()
        self.policy.reset()
        self.press_memory = self.press.stream_memory() if self.press is not None else None
        if self.encoder_cache is not None:
            self.encoder_cache.reset()
        ids = self.template.prefix_ids.to(self.model.device)
        self._prefill(ids[None], self.layout.prefix(len(ids)), {})
        self._add_slots(PREFIX, -1, ids.cpu(), self.layout.prefix(len(ids)))

    # -- the stream -----------------------------------------------------------------------------------------
    @property
    def cache_length(self) -> int:
        return self.cache.get_seq_length()

    @property
    def visual_tokens(self) -> int:
        return int((self.slot_kind == VISUAL).sum())

    @torch.no_grad()
    def append(self, frames, timestamps) -> int:
        """Encode, press and prefill one chunk of frames uint8 [F, H, W, 3] at `timestamps` [F] seconds; returns
        the visual tokens it added (0 while frames wait to complete a temporal group). A chunk that fails to
        decode or encode raises a ValueError and leaves the stream as it was."""
        frames, seconds = self._check_chunk(frames, timestamps)
        frames = list(self.pending_frames) + list(frames)
        seconds = list(self.pending_seconds) + list(seconds)
        usable = len(frames) - len(frames) % self.temporal_patch
        self.pending_frames, self.pending_seconds = frames[usable:], seconds[usable:]
        if not usable:
            return 0
        start = time.perf_counter()
        added = self._append_chunk(np.stack(frames[:usable]), seconds[:usable])
        self._stats.ms_per_chunk.append((time.perf_counter() - start) * 1000)
        return added

    def _check_chunk(self, frames, timestamps) -> tuple[np.ndarray, list[float]]:
        if isinstance(frames, torch.Tensor):
            frames = frames.cpu().numpy()
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
            raise ValueError(f"a chunk must be uint8 frames [F, H, W, 3] with F >= 1; got {frames.dtype} "
                             f"{tuple(frames.shape)}")
        seconds = [float(s) for s in np.asarray(timestamps, dtype=np.float64).reshape(-1)]
        if len(seconds) != len(frames):
            raise ValueError(f"got {len(frames)} frames but {len(seconds)} timestamps; pass one per frame")
        previous = self.pending_seconds[-1] if self.pending_seconds else self.last_second
        sequence = ([previous] if previous is not None else []) + seconds
        if not all(np.isfinite(seconds)) or any(b <= a for a, b in zip(sequence, sequence[1:])):
            raise ValueError(f"timestamps must be finite and increase across the stream; got {seconds} after "
                             f"{previous}")
        return frames, seconds

    def _append_chunk(self, frames: np.ndarray, seconds: list[float]) -> int:
        if self.first_second is None:
            self.first_second = seconds[0]
        # Frame indices in milliseconds at 1000 fps: the processor turns them back into the same seconds.
        indices = [round((s - self.first_second) * 1000) for s in seconds]
        metadata = frames_metadata(frames, fps=1000.0, frame_indices=indices, total_frames=indices[-1] + 1)
        inputs = self.processor(text=[self.processor.video_token], videos=[frames], video_metadata=[metadata],
                                do_sample_frames=False, return_tensors="pt", add_special_tokens=False)
        inputs = {k: v.to(self.model.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        if inputs["pixel_values_videos"].is_floating_point():
            inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(self.model.dtype)
        clock, stage_ms = _Clock(self.model.device), {}
        output, layout = self._encode(inputs)
        stage_ms["encode"] = clock.lap()
        tokens = layout.tokens
        selection = (self.press.select_chunk(tokens, self.press_memory) if self.press is not None
                     else Press(retention=1.0).select(tokens))
        keep = selection.keep_indices.to(tokens.features.device)
        extra = tokens.num_tokens if layout.extra is None else tokens.num_tokens + layout.extra.shape[0]
        rows = torch.cat([keep, torch.arange(tokens.num_tokens, extra, device=keep.device)])
        flat = tokens.features.reshape(tokens.num_tokens, -1)
        kept = (selection.features if selection.features is not None else flat[keep]).to(flat.dtype)
        if layout.extra is not None:
            kept = torch.cat([kept, layout.extra])
        frame_of_row = torch.cat([keep // tokens.tokens_per_frame,
                                  torch.full((extra - tokens.num_tokens,), tokens.num_frames - 1, device=keep.device)])
        frame_of_row = frame_of_row.cpu() + self.groups_seen
        origin_of_row = torch.cat([keep.cpu() + self.groups_seen * tokens.tokens_per_frame,
                                   torch.full((extra - tokens.num_tokens,), -1, dtype=torch.long)])
        group_seconds = torch.tensor(seconds[:: self.temporal_patch], dtype=torch.float64) - self.first_second

        ids = inputs["input_ids"]
        layout_before = (self.layout.next_text, self.layout.groups, self.layout.spatial)
        positions = self.layout.chunk(inputs, group_seconds)
        slots = (ids[0] == self.adapter.video_token_id).nonzero().squeeze(1)
        if slots.numel() != extra:
            raise RuntimeError(f"vidpress: a chunk has {slots.numel()} video placeholders for {extra} features")
        keep_slot = torch.ones(ids.shape[1], dtype=torch.bool, device=ids.device)
        keep_slot[slots] = False
        keep_slot[slots[rows]] = True
        chunk_ids = ids[:, keep_slot]
        chunk_positions = positions[:, keep_slot.cpu()]
        need = int(rows.numel())
        if self.memory_tokens is not None and need > self.memory_tokens:
            self.layout.next_text, self.layout.groups, self.layout.spatial = layout_before
            raise ValueError(f"one chunk brings {need} visual tokens, more than memory_tokens={self.memory_tokens}; "
                             "raise memory_tokens, send shorter chunks or press harder (lower retention)")
        packed = self.adapter.pack_videos(output, [rows], [kept])
        stage_ms["press"] = clock.lap()
        if self.memory_tokens is not None and self.visual_tokens + need > self.memory_tokens:
            self._evict_for(need, kept.float().cpu(), frame_of_row)
        stage_ms["evict"] = clock.lap()
        index = self._stats.chunks
        try:
            self._prefill(chunk_ids, chunk_positions, {"video": packed}, inputs)
        except Exception:
            self.layout.next_text, self.layout.groups, self.layout.spatial = layout_before
            self._crop_to(int(self.slot_kind.numel()))
            raise
        stage_ms["prefill"] = clock.lap()
        kinds = torch.full((chunk_ids.shape[1],), CHUNK_TEXT, dtype=torch.long)
        kinds[(chunk_ids[0] == self.adapter.video_token_id).cpu()] = VISUAL
        self._add_slots(kinds, index, chunk_ids[0].cpu(), chunk_positions)
        width = kept.shape[-1]
        if not self.visual_features.numel():
            self.visual_features = torch.empty(0, width)
        self.visual_features = torch.cat([self.visual_features, kept.float().cpu()])
        self.visual_frame = torch.cat([self.visual_frame, frame_of_row])
        self.visual_origin = torch.cat([self.visual_origin, origin_of_row])
        start_frame = self.frames_seen
        self.frames_seen += len(frames)
        self.groups_seen += tokens.num_frames
        self.last_second = seconds[-1]
        self.chunks[index] = ChunkRecord(index, (start_frame, self.frames_seen), (seconds[0], seconds[-1]),
                                         chunk_ids[0].cpu(), chunk_positions, packed, inputs.get("video_grid_thw"),
                                         origin_of_row)
        self.policy.on_append(self, index, kept.float().cpu())
        stats = self._stats
        stats.chunks += 1
        stats.frames += len(frames)
        stats.visual_tokens_seen += tokens.num_tokens
        stats.visual_tokens_pressed_out += tokens.num_tokens - selection.num_kept
        for stage, ms in stage_ms.items():
            stats.stage_ms[stage].append(ms)
        return need

    def _encode(self, inputs: dict):
        if self.encoder_cache is not None:
            with self.encoder_cache.active():
                output = self.adapter.encode("video", inputs)
            self._stats.encoder_work_saved = self.encoder_cache.work_saved
            layouts = self.adapter.video_layouts(output, inputs)
        elif self.press is not None:  # as a pressed call encodes (vision statistics for presses that read them)
            output, layouts = self.adapter.encode_videos(self.press, inputs)
        else:
            output = self.adapter.encode("video", inputs)
            layouts = self.adapter.video_layouts(output, inputs)
        if len(layouts) != 1:
            raise RuntimeError(f"vidpress: one chunk encoded to {len(layouts)} videos")
        return output, layouts[0]

    def _prefill(self, ids: torch.Tensor, positions: torch.Tensor, encoder_outputs: dict, inputs: dict | None = None):
        """Run ids [1, L] at positions [R, L] on top of the cache; returns the logits [1, L, V]."""
        length = self.cache_length
        kwargs = {"input_ids": ids, "past_key_values": self.cache, "use_cache": True,
                  "attention_mask": torch.ones(1, length + ids.shape[1], dtype=torch.long, device=ids.device)}
        positions = positions.to(ids.device)
        if self.adapter.mrope:
            slots = torch.arange(length, length + ids.shape[1], device=ids.device)
            kwargs["position_ids"] = torch.cat([slots[None], positions])[:, None]  # [4, 1, L]: row 0 cache slots
            kwargs["mm_token_type_ids"] = self.adapter.mm_token_type_ids({"input_ids": ids})
        else:
            kwargs["position_ids"] = positions
        if encoder_outputs:
            kwargs["mm_encoder_outputs"] = encoder_outputs
            if inputs is not None and inputs.get("video_grid_thw") is not None:
                kwargs["video_grid_thw"] = inputs["video_grid_thw"]
        out = self.model(**kwargs)
        self._check_cache()
        return out.logits

    def _check_cache(self) -> None:
        for layer in self.cache.layers:
            if type(layer) is not DynamicLayer:
                raise ValueError(f"a stream evicts rows of a plain DynamicCache; this model's cache has "
                                 f"{type(layer).__name__} layers (sliding-window or quantised caches are not "
                                 "supported)")

    def _add_slots(self, kinds, chunk: int, ids: torch.Tensor, positions: torch.Tensor) -> None:
        n = positions.shape[1]
        kinds = torch.full((n,), kinds, dtype=torch.long) if isinstance(kinds, int) else kinds
        self.slot_kind = torch.cat([self.slot_kind, kinds])
        self.slot_ids = torch.cat([self.slot_ids, ids])
        self.slot_chunk = torch.cat([self.slot_chunk, torch.full((n,), chunk, dtype=torch.long)])
        self.slot_positions = torch.cat([self.slot_positions, positions.cpu()], dim=1)
        self._stats.visual_tokens_in_memory = self.visual_tokens

    # -- memory ---------------------------------------------------------------------------------------------
    def memory_view(self) -> MemoryView:
        """The cached visual tokens as a policy sees them."""
        visual = self.slot_kind == VISUAL
        return MemoryView(self.visual_features, self.slot_chunk[visual], self.visual_frame)

    def _evict_for(self, need: int, incoming: torch.Tensor, incoming_frame: torch.Tensor) -> None:
        excess = self.visual_tokens + need - self.memory_tokens
        chosen = self.policy.choose(self.memory_view(), incoming, incoming_frame, excess)
        chosen = torch.unique(chosen)
        if chosen.numel() < excess:
            raise RuntimeError(f"vidpress: policy {self.policy.name} chose {chosen.numel()} of {excess} tokens")
        self.evict_visual(chosen)

    def evict_visual(self, visual_indices: torch.Tensor) -> None:
        """Remove visual tokens (indices into the cached visual tokens, slot order) from the cache; a chunk whose
        visual tokens are all gone loses its text slots too (Qwen3-VL's timestamps)."""
        visual_slots = (self.slot_kind == VISUAL).nonzero().squeeze(1)
        drop = torch.zeros(self.slot_kind.numel(), dtype=torch.bool)
        drop[visual_slots[visual_indices]] = True
        remaining = self.slot_chunk[(self.slot_kind == VISUAL) & ~drop]
        emptied = self.slot_chunk.unique()
        emptied = emptied[(emptied >= 0) & ~torch.isin(emptied, remaining)]
        drop |= (self.slot_kind == CHUNK_TEXT) & torch.isin(self.slot_chunk, emptied)
        evicted_chunks = [int(c) for c in emptied]
        self.policy.on_evict(self, evicted_chunks)
        for c in evicted_chunks:
            self.chunks.pop(c, None)
        keep = (~drop).nonzero().squeeze(1)
        for layer in self.cache.layers:
            index = keep.to(layer.keys.device)
            layer.keys = layer.keys.index_select(-2, index)
            layer.values = layer.values.index_select(-2, index)
        kept_visual = ~drop[visual_slots]
        self.visual_features = self.visual_features[kept_visual]
        self.visual_frame = self.visual_frame[kept_visual]
        self.visual_origin = self.visual_origin[kept_visual]
        self.slot_kind, self.slot_chunk, self.slot_ids = (self.slot_kind[keep], self.slot_chunk[keep],
                                                          self.slot_ids[keep])
        self.slot_positions = self.slot_positions[:, keep]
        self._stats.visual_tokens_evicted += int(drop[visual_slots].sum())
        self._stats.visual_tokens_in_memory = self.visual_tokens

    def _crop_to(self, length: int) -> None:
        """Drop every cache slot after the first `length` (a question, recalled clips, a failed prefill)."""
        extra = self.cache_length - length
        if extra > 0:
            self.cache.crop(-extra)  # transformers 5.23: a negative count removes that many trailing tokens

    # -- questions ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def question_logits(self, question: str, recall: bool = False) -> torch.Tensor:
        """Logits [Q, V] of the question's tokens on the stream; with `recall`, after the memory policy brought
        back what it recalls for the question (policy "recall"), as `ask` does. The stream is unchanged
        afterwards."""
        length = self.cache_length
        ids = self.template.question_ids(question).to(self.model.device)
        try:
            self._start_question(question if recall else None)
            return self._prefill(ids[None], self.layout.text(len(ids)), {})[0]
        finally:
            self._crop_to(length)

    def _start_question(self, question: str | None) -> None:
        """Let the policy bring back what it recalls for `question` (None: nothing) and note the visual tokens the
        question will see (`last_question_origins`)."""
        self.last_question_origins = self.visual_origin.clone()
        if question is not None:
            self.policy.before_question(self, question)

    @torch.no_grad()
    def ask(self, question: str, max_new_tokens: int = 64, do_sample: bool = False, temperature: float = 1.0,
            top_p: float = 1.0, seed: int | None = None) -> str:
        """Answer `question` from the stream (at most `max_new_tokens` tokens); the cache is cropped back afterwards,
        so the stream continues exactly as before the question.

        Greedy by default; with `do_sample`, each token is drawn from softmax(logits / temperature) restricted to the
        smallest set of most likely tokens whose probability reaches `top_p` (nucleus sampling, as transformers'
        TopPLogitsWarper keeps it), with a generator seeded by `seed` (None: a fresh random seed), so the same seed
        gives the same answer."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer; got {max_new_tokens!r}")
        generator = self._sampler(do_sample, temperature, top_p, seed)
        clock = _Clock(self.model.device)
        length = self.cache_length
        ids = self.template.question_ids(question).to(self.model.device)
        eos = self._eos_ids()
        answer: list[int] = []
        try:
            self._start_question(question)
            logits = self._prefill(ids[None], self.layout.text(len(ids)), {})
            position = self.layout.next_text + len(ids)
            for step in range(max_new_tokens):
                last = logits[0, -1].float()
                token = int(last.argmax()) if generator is None else sample_token(last, temperature, top_p, generator)
                if token in eos:
                    break
                answer.append(token)
                if step + 1 == max_new_tokens:
                    break
                logits = self._prefill(torch.tensor([[token]], device=ids.device), self.layout.text(1, position), {})
                position += 1
        finally:
            self._crop_to(length)
        self._stats.questions += 1
        self._stats.stage_ms["ask"].append(clock.lap())
        return self.template.tokenizer.decode(answer, skip_special_tokens=True)

    @staticmethod
    def _sampler(do_sample: bool, temperature: float, top_p: float, seed: int | None) -> torch.Generator | None:
        """The seeded CPU generator of a sampled answer (None: greedy); bad knobs are a ValueError."""
        if not do_sample:
            return None
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a positive number; got {temperature!r}")
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1]; got {top_p!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an integer or None; got {seed!r}")
        generator = torch.Generator()
        generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, (1,))))
        return generator

    def _eos_ids(self) -> set[int]:
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        return {eos} if isinstance(eos, int) else set(eos or [])

    def recall(self, records: list[ChunkRecord]) -> None:
        """Prefill evicted chunks again after the memory, at their original positions (for one question; `ask`
        crops them away with the question)."""
        for record in records:
            self.last_question_origins = torch.cat([self.last_question_origins, record.origins])
            self._prefill(record.input_ids.to(self.model.device)[None], record.positions, {"video": record.packed},
                          {"video_grid_thw": record.grid})

    def stage_times(self, stage: str) -> list[float]:
        """The latest chunks' (or questions', for "ask") wall ms of `stage`, one of STAGES, oldest first."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; accepted: {', '.join(STAGES)}")
        return list(self._stats.stage_ms[stage])

    def stats(self) -> dict:
        """Tokens in memory, evicted, pressed out, encoder work saved (share of vision-encoder work skipped by
        STC's cache), ms per chunk (median, last) and per stage (median: encode, press, evict, prefill, ask), cache
        length."""
        self._stats.cache_tokens = self.cache_length
        return self._stats.as_dict()


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """One token drawn from logits [V]: softmax(logits / temperature), cut to the most likely tokens whose cumulative
    probability first reaches `top_p` (the most likely token always stays), renormalised."""
    probs = torch.softmax(logits.cpu() / temperature, dim=-1)
    order = torch.argsort(probs, descending=True, stable=True)
    sorted_probs = probs[order]
    # keep a token while the probability before it is below top_p: the smallest set reaching top_p
    keep = (sorted_probs.cumsum(0) - sorted_probs) < top_p
    kept = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
    return int(order[torch.multinomial(kept / kept.sum(), 1, generator=generator)])
