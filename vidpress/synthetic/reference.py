"""The tiny reference Video LLM of the synthetic world: a stock Qwen2.5-VL, trained on CPU in minutes.

The model is transformers' own `Qwen2_5_VLForConditionalGeneration` built from a small config (vision depth 2 /
hidden 96, text 4 layers / hidden 128, patch 14, spatial merge 2, temporal patch 2: 16 frames of 112x112 give
8 x 4 x 4 = 128 video tokens, ~1.2M parameters), with its real processor, a byte-level BPE tokenizer on which
the letters A-D are single tokens, and Qwen's chat template. The answer is the first generated token after
"<|im_start|>assistant\\n" (then "<|im_end|>"). Its training recipe is `vidpress.training.reference`.

    model, processor = load_reference()                      # the checkpoint shipped in the package
    examples = make_split("test", 60)
    inputs = example_inputs(processor, examples)
    with VidCom2Press(retention=0.25)(model):
        logits = model(**inputs).logits[:, -1, letter_token_ids(processor)]   # [B, 4], argmax = answer
"""

from __future__ import annotations

from pathlib import Path

from vidpress.inputs import build_inputs
from vidpress.synthetic.world import COLOUR_NAMES, COUNT_OPTIONS, FLASH_SHAPES, LETTERS, QUADRANTS, QUESTIONS, Example

__all__ = [
    "CACOVID_REFERENCE_DIR",
    "CLIP_RETRIEVER_DIR",
    "FPS",
    "MARC_LONG_REFERENCE_DIR",
    "MARC_REFERENCE_DIR",
    "REFERENCE_DIR",
    "build_untrained",
    "example_inputs",
    "letter_token_ids",
    "load_reference",
]

REFERENCE_DIR = Path(__file__).with_name("reference_model")
#: The CaCoVID policy trained for the shipped reference model (`vidpress train cacovid`, see its MODEL_CARD.md).
CACOVID_REFERENCE_DIR = Path(__file__).with_name("cacovid_reference")
#: The shipped C-GRPO student of the reference model (`vidpress train cgrpo`, see its MODEL_CARD.md).
MARC_REFERENCE_DIR = Path(__file__).with_name("marc_reference")
#: The tiny CLIP-style dual encoder trained on the long family for MARC's retrieval before the encoder
#: (`vidpress train clip-retriever`, see its MODEL_CARD.md); loads with `vidpress.retrieval.CLIPEmbedder`.
CLIP_RETRIEVER_DIR = Path(__file__).with_name("clip_retriever")
#: The C-GRPO student of the reference model for the long family, trained through MARC's retrieval before the
#: encoder (`vidpress train cgrpo --family long --retriever ...`, see its MODEL_CARD.md).
MARC_LONG_REFERENCE_DIR = Path(__file__).with_name("marc_long_reference")
#: Frame rate the clips are described with (and written at): temporal M-RoPE ids advance by 1 per token pair.
FPS = 8.0
FAMILY = "qwen2_5_vl"
#: Overrides of vidpress.tiny's tiny Qwen2.5-VL (text: hidden 128, 4 heads / 2 kv heads, MLP 256).
TEXT_CONFIG = dict(num_hidden_layers=4)
VISION_CONFIG = dict(hidden_size=96, intermediate_size=192, num_heads=4)


def _corpus() -> list[str]:
    colours = " ".join(f"{LETTERS[k]}. {c}" for k, c in enumerate(COLOUR_NAMES))
    counts = " ".join(f"{LETTERS[k]}. {c}" for k, c in enumerate(COUNT_OPTIONS))
    questions = [q for q in QUESTIONS.values() if "{" not in q]
    questions += [QUESTIONS["query"].format(shape=shape) for shape in FLASH_SHAPES]
    questions += [QUESTIONS["query_position"].format(quadrant=q) for q in QUADRANTS]
    return (["You are a helpful assistant. system user assistant"]
            + [f"{q} {colours}. {counts}. Answer with the letter." for q in questions] * 3)


def build_untrained(seed: int = 0):
    """The reference architecture with random weights: `(model, processor)`."""
    from vidpress.tiny import tiny_model_and_processor

    model, processor = tiny_model_and_processor(
        FAMILY, seed=seed, text_config=TEXT_CONFIG, vision_config=VISION_CONFIG, corpus=_corpus()
    )
    letter_token_ids(processor)  # checks the letters are single tokens
    return model, processor


def load_reference(path=None, attn_implementation: str = "sdpa"):
    """`(model.eval(), processor)` of the reference model at `path` (default: the checkpoint shipped in vidpress)."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    path = Path(path) if path is not None else REFERENCE_DIR
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no reference model here (expected config.json from save_pretrained)")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, attn_implementation=attn_implementation)
    return model.eval(), AutoProcessor.from_pretrained(path)


def letter_token_ids(processor) -> list[int]:
    """Token ids of the answer letters "A".."D" (each a single token), in option order."""
    tokenizer = getattr(processor, "tokenizer", processor)
    ids = []
    for letter in LETTERS:
        encoded = tokenizer.encode(letter, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"the letter {letter!r} is not a single token ({encoded}) for this tokenizer")
        ids.append(encoded[0])
    return ids


def example_inputs(processor, examples: list[Example]):
    """Left-padded batch for `examples` straight from the processor: the chat template with one video and the
    question, frames used as given (`do_sample_frames=False`) and described at FPS frames per second."""
    return build_inputs(processor, [e.question for e in examples], [[e.video] for e in examples], fps=FPS)
