"""Tiny random-weight Video LLMs that build offline: the demo model (`load_tiny`), the tokenizer of the profiler's
published-shape builds, synthetic frames, and the tests' models (`vidpress.testing` re-exports them).

Each family is the stock transformers model class built from a small config, saved with its real processor
class (image + video processor, chat template) and a byte-level BPE tokenizer trained in-process, so the whole
Hugging Face loading and preprocessing path runs without any hub download. Every model has 0.5-0.85M float32
parameters (2-3.3 MB on disk) and a forward on a short clip takes ~10 ms on CPU.

At 56x56 and 8 frames every family yields 4 visual tokens per frame (per temporal pair of frames for Qwen):

=================  ==========================================================================
qwen2_vl           2x2 merged tokens x 4 temporal groups = 16 <|video_pad|>
qwen2_5_vl         same as qwen2_vl
qwen3_vl           per temporal group: "<t seconds><|vision_start|>" + 4 <|video_pad|> + "<|vision_end|>"
llava_onevision    8 frames x 2x2 pooled tokens + 1 trailing newline token = 33 <video>
llava_next_video   8 frames x 2x2 pooled tokens = 32 <video>
=================  ==========================================================================

One file per family (qwen2_vl.py, ...) defines FAMILY, a `Family` (family.py): its special tokens, chat template,
config, processor and model class. Adding a family is one such file plus its name in FAMILIES.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import shutil
import tempfile

import torch
import transformers

from vidpress.tiny.family import Family
from vidpress.tiny.tokenizer import CORPUS, bpe_tokenizer
from vidpress.tiny.videos import tiny_image, tiny_video

# The family table: each name is the module vidpress/tiny/<name>.py, which defines FAMILY.
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision", "llava_next_video")
_FAMILIES: dict[str, Family] = {name: importlib.import_module(f"{__name__}.{name}").FAMILY for name in FAMILIES}

MODEL_CLASSES = {name: family.model_class for name, family in _FAMILIES.items()}
CHAT_TEMPLATES = {name: family.chat_template for name, family in _FAMILIES.items()}

# Bumped whenever a tiny config, processor or tokenizer changes, so stale caches are rebuilt.
_TINY_VERSION = 1
_MARKER = "vidpress_tiny.json"


def _family(name: str) -> Family:
    if name not in _FAMILIES:
        raise ValueError(f"unknown family {name!r}; expected one of {FAMILIES}")
    return _FAMILIES[name]


def train_tokenizer(family: str, corpus=CORPUS, vocab_size: int = 400) -> transformers.PreTrainedTokenizerFast:
    """Byte-level BPE (~`vocab_size` tokens, trained on `corpus`) with the family's special tokens at ids 0..k-1."""
    return bpe_tokenizer(_family(family), corpus, vocab_size)


def special_token_ids(tokenizer, family: str) -> dict:
    """The config arguments naming `family`'s media-token ids in `tokenizer`, e.g. {"video_token_id": 6, ...}."""
    return _family(family).token_ids(tokenizer)


def tiny_model_and_processor(family: str, *, seed: int = 0, text_config=None, vision_config=None, corpus=None):
    """A random-weight tiny `family` model (eval mode) and its processor, in memory.

    text_config / vision_config: dicts that override the tiny defaults (e.g. num_hidden_layers=4);
    corpus: texts the BPE tokenizer is trained on (default: a small generic corpus). Deterministic given `seed`.
    """
    spec = _family(family)
    tokenizer = bpe_tokenizer(spec, corpus if corpus is not None else CORPUS)
    config = spec.config(tokenizer, text_config)
    for key, value in (vision_config or {}).items():
        setattr(config.vision_config, key, value)
    torch.manual_seed(seed)
    model = getattr(transformers, spec.model_class)(config).eval()
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    return model, spec.processor(tokenizer)


def build_tiny_model(family: str, path, *, seed: int = 0) -> pathlib.Path:
    """Build a random-weight tiny `family` model + processor + tokenizer and save them to `path`.

    Deterministic given `seed`. Returns `path` as a Path; loads with `from_pretrained` / `AutoProcessor`.
    """
    path = pathlib.Path(path)
    model, processor = tiny_model_and_processor(family, seed=seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    (path / _MARKER).write_text(json.dumps({"family": family, "seed": seed, "version": _TINY_VERSION}))
    return path


def _default_cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("VIDPRESS_CACHE") or pathlib.Path.home() / ".cache" / "vidpress" / "tiny")


def _is_current(path: pathlib.Path, family: str) -> bool:
    try:
        marker = json.loads((path / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker == {"family": family, "seed": 0, "version": _TINY_VERSION}


def load_tiny(family: str, *, attn_implementation: str = "eager", cache_dir=None):
    """Return `(model.eval(), processor)` for `family`, building it into `cache_dir/<family>` on first use.

    `cache_dir` defaults to `$VIDPRESS_CACHE` or `~/.cache/vidpress/tiny`.
    """
    spec = _family(family)
    root = pathlib.Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    path = root / family
    if not _is_current(path, family):
        root.mkdir(parents=True, exist_ok=True)
        # Build beside the target and move it in, so concurrent test workers never load a half-written model.
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{family}-", dir=root))
        try:
            build_tiny_model(family, tmp)
            if not _is_current(path, family):  # another process may have finished first
                shutil.rmtree(path, ignore_errors=True)
                os.replace(tmp, path)
        except OSError:
            if not _is_current(path, family):
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    model_cls = getattr(transformers, spec.model_class)
    model = model_cls.from_pretrained(path, attn_implementation=attn_implementation)
    processor = transformers.AutoProcessor.from_pretrained(path)
    return model.eval(), processor


__all__ = [
    "CHAT_TEMPLATES", "FAMILIES", "MODEL_CLASSES", "Family", "build_tiny_model", "load_tiny", "special_token_ids",
    "tiny_image", "tiny_model_and_processor", "tiny_video", "train_tokenizer",
]
