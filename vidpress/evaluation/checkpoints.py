"""Published shapes of real Video LLM checkpoints, built with random weights so their cost can be measured offline.

`build(name)` returns the stock transformers model class built from the checkpoint's published config values
(every width, depth, head count, vocabulary and vision setting as released) and the family's real processor class
with the checkpoint's published preprocessing, so a synthetic video goes through the same resizing, patching and
token expansion as with the real weights. Only two things differ, neither of which changes the cost:
- the tokenizer is a small byte-level BPE trained offline (`vidpress.tiny`), so the special-token ids are
  re-numbered to its ids (the vocabulary size, hence the embedding and output layers, stay the published ones);
- the weights are random.
`layers` / `vision_layers` keep fewer decoder layers / vision blocks, for machines where the full depth is too slow
or too large (the 7B models need ~31 GiB in float32).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import transformers


@dataclass(frozen=True)
class Checkpoint:
    """A released checkpoint's architecture.

    family: the vidpress.tiny family whose model/processor classes it uses.
    repo: where the published config lives. text / vision: the config values, as published.
    extra: further top-level config values.
    """

    family: str
    repo: str
    text: dict
    vision: dict
    extra: dict = field(default_factory=dict)

    @property
    def layers(self) -> int:
        return self.text["num_hidden_layers"]

    @property
    def vision_layers(self) -> int:
        return self.vision.get("depth", self.vision.get("num_hidden_layers"))


_QWEN25_VL_VISION = dict(
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, hidden_act="silu", in_channels=3, patch_size=14,
    spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
)
_QWEN25_ROPE = dict(rope_type="default", rope_theta=1000000.0, mrope_section=[16, 24, 24])

CHECKPOINTS: dict[str, Checkpoint] = {
    "qwen2.5-vl-7b": Checkpoint(
        family="qwen2_5_vl",
        repo="Qwen/Qwen2.5-VL-7B-Instruct",
        text=dict(
            hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
            num_key_value_heads=4, vocab_size=152064, max_position_embeddings=128000, rms_norm_eps=1e-6,
            hidden_act="silu", tie_word_embeddings=False, rope_parameters=_QWEN25_ROPE,
        ),
        vision={**_QWEN25_VL_VISION, "out_hidden_size": 3584},
    ),
    "qwen2.5-vl-3b": Checkpoint(
        family="qwen2_5_vl",
        repo="Qwen/Qwen2.5-VL-3B-Instruct",
        text=dict(
            hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
            num_key_value_heads=2, vocab_size=151936, max_position_embeddings=128000, rms_norm_eps=1e-6,
            hidden_act="silu", tie_word_embeddings=True, rope_parameters=_QWEN25_ROPE,
        ),
        vision={**_QWEN25_VL_VISION, "out_hidden_size": 2048},
        extra=dict(tie_word_embeddings=True),
    ),
    "llava-ov-7b": Checkpoint(
        family="llava_onevision",
        repo="llava-hf/llava-onevision-qwen2-7b-ov-hf (LLaVA-OneVision-Qwen2-7B)",
        text=dict(
            model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
            num_attention_heads=28, num_key_value_heads=4, vocab_size=152128, max_position_embeddings=32768,
            rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=False,
            rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
        ),
        # SigLIP so400m/14 at 384 px without its last layer and head, as LLaVA-OneVision uses it.
        vision=dict(
            model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
            num_attention_heads=16, image_size=384, patch_size=14, vision_use_head=False,
        ),
        extra=dict(
            vision_feature_select_strategy="full", vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9",
            projector_hidden_act="gelu", tie_word_embeddings=False,
        ),
    ),
}
TINY = "tiny"  # vidpress.tiny's tiny random Qwen2.5-VL (text 128 wide, 2 layers; vision 64 wide, 2 blocks)
TINY_DEPTHS = (2, 2)
NAMES = (*CHECKPOINTS, TINY)


def depths(name: str, layers: int | None = None, vision_layers: int | None = None) -> tuple[int, int]:
    """(LLM decoder layers, vision blocks) that `build(name, layers=..., vision_layers=...)` gives, checked before
    anything is built: ValueError for an unknown name or a depth outside [1, published depth]."""
    if name not in NAMES:
        raise ValueError(f"unknown config {name!r}; accepted: {', '.join(NAMES)}")
    published = TINY_DEPTHS if name == TINY else (CHECKPOINTS[name].layers, CHECKPOINTS[name].vision_layers)
    return _depth(layers, published[0], "layers"), _depth(vision_layers, published[1], "vision-layers")


def build(name: str, *, layers: int | None = None, vision_layers: int | None = None, dtype=torch.float32,
          device="cpu", attn_implementation: str = "sdpa"):
    """`(model.eval(), processor)` of checkpoint `name` (see NAMES) with random weights, built on `device`.

    layers / vision_layers: keep this many LLM decoder layers / vision blocks (default: all, as published).
    ValueError for an unknown name or a depth outside [1, published depth].
    """
    from vidpress import tiny  # (imported here: it loads transformers' processors, which the CLI parser need not)

    text_layers, vision_blocks = depths(name, layers, vision_layers)
    if name == TINY:
        text = {"num_hidden_layers": text_layers} if layers is not None else None
        vision = {"depth": vision_blocks} if vision_layers is not None else None
        with torch.device(device):
            model, processor = tiny.tiny_model_and_processor("qwen2_5_vl", text_config=text, vision_config=vision)
        model.set_attn_implementation(attn_implementation)
        return model.to(dtype).eval(), processor
    checkpoint = CHECKPOINTS[name]
    tokenizer = tiny.train_tokenizer(checkpoint.family)
    config = _config(checkpoint, tokenizer, text_layers, vision_blocks)
    model_class = getattr(transformers, tiny.MODEL_CLASSES[checkpoint.family])
    if torch.device(device).type != "meta":
        _check_fits(name, model_class, config, dtype, torch.device(device))
    with torch.device(device):
        model = model_class._from_config(config, dtype=dtype, attn_implementation=attn_implementation).eval()
    generation = model.generation_config
    generation.bos_token_id, generation.eos_token_id, generation.pad_token_id = (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
    )
    return model, _processor(checkpoint, tokenizer)


def _check_fits(name: str, model_class, config, dtype, device: torch.device) -> None:
    """ValueError before allocating when the weights alone exceed the memory available on `device`."""
    with torch.device("meta"):  # shapes only: instant, no memory
        needed = sum(p.numel() for p in model_class._from_config(config, dtype=dtype).parameters())
    needed *= torch.finfo(dtype).bits // 8
    if device.type == "cuda":
        available = torch.cuda.mem_get_info(device)[0]
    else:
        available = _available_ram()
    if available is not None and needed > available:
        raise ValueError(
            f"{name} with {config.get_text_config().num_hidden_layers} decoder layers needs {needed / 2**30:.1f} GiB "
            f"for its {str(dtype).removeprefix('torch.')} weights; {available / 2**30:.1f} GiB are available on "
            f"{device}: keep fewer layers (--layers N, --vision-layers N) or use --dtype bfloat16"
        )


def _available_ram() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _depth(value: int | None, published: int, option: str) -> int:
    if value is None:
        return published
    if not 1 <= value <= published:
        raise ValueError(f"--{option} must be in [1, {published}] (the published depth); got {value}")
    return value


def _config(checkpoint: Checkpoint, tokenizer, layers: int, vision_layers: int) -> transformers.PreTrainedConfig:
    from vidpress import tiny

    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    text = {**checkpoint.text, **special, "num_hidden_layers": layers}
    ids = tiny.special_token_ids(tokenizer, checkpoint.family)
    if checkpoint.family == "qwen2_5_vl":
        # Fewer blocks keep the published pattern: every 8th block (7, 15, ...) attends globally, the rest in windows;
        # a tower shallower than 8 ends with one global block.
        full = [i for i in checkpoint.vision["fullatt_block_indexes"] if i < vision_layers] or [vision_layers - 1]
        vision = {**checkpoint.vision, "depth": vision_layers, "fullatt_block_indexes": full}
        return transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids, **checkpoint.extra)
    vision = {**checkpoint.vision, "num_hidden_layers": vision_layers}
    return transformers.LlavaOnevisionConfig(text_config=text, vision_config=vision, **ids, **checkpoint.extra)


def _processor(checkpoint: Checkpoint, tokenizer):
    """The family's processor with the checkpoint's published preprocessing."""
    from vidpress import tiny

    template = tiny.CHAT_TEMPLATES[checkpoint.family]
    if checkpoint.family == "qwen2_5_vl":
        # Qwen2.5-VL's preprocessor_config: 3136 <= pixels per image <= 12845056; videos: 128 to 768 merged
        # 28 px patches per frame, within a per-video pixel budget, as the reference qwen-vl-utils does.
        image = transformers.Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056)
        video = transformers.Qwen2VLVideoProcessor(cap_pixels_per_frame=True)
        return transformers.Qwen2_5_VLProcessor(
            image_processor=image, video_processor=video, tokenizer=tokenizer,
            chat_template=template,
        )
    # LLaVA-OneVision: frames resized to 384x384, SigLIP's normalisation (mean = std = 0.5).
    size = checkpoint.vision["image_size"]
    side = size // checkpoint.vision["patch_size"]
    siglip = dict(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return transformers.LlavaOnevisionProcessor(
        image_processor=transformers.LlavaOnevisionImageProcessor(**siglip),
        video_processor=transformers.LlavaOnevisionVideoProcessor(**siglip),
        tokenizer=tokenizer,
        num_image_tokens=side * side,
        vision_feature_select_strategy="full",
        chat_template=template,
    )
