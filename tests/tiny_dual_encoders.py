"""Tiny random-weight CLIP and SigLIP dual encoders that build offline, for the tests of `CLIPEmbedder`.

Each is the stock transformers class built from a small config (32 px images, 8 px patches, width 32, 2 layers),
saved with its real image processor and a byte-level BPE tokenizer trained in-process, so loading it runs the
same `AutoModel` / `AutoProcessor` path as a real checkpoint. Random weights: the embeddings carry no meaning.
"""

from __future__ import annotations

import pathlib

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

KINDS = ("clip", "siglip")
_CORPUS = (
    "a man rides a bike past a taxi; a street with parked cars; a bunny comes out of its hole in the grass;",
    "what happens in the video? who rides the bike? what colour is the car? where is the rabbit? a fence, a door",
)


def _tokenizer(kind: str) -> transformers.PreTrainedTokenizerFast:
    bos, eos, pad = ("<s>", "</s>", "<pad>")
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[pad, "<unk>", bos, eos], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_CORPUS, trainer=trainer)
    # CLIP pools its text at the end-of-text token, so every text must end with it; SigLIP pools the last position.
    single = f"{bos} $A {eos}" if kind == "clip" else f"$A {eos}"
    bpe.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[(bos, bpe.token_to_id(bos)), (eos, bpe.token_to_id(eos))]
    )
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=bos, eos_token=eos, pad_token=pad,
                                                unk_token="<unk>", model_max_length=16)


def build_tiny_dual_encoder(kind: str, path, seed: int = 0) -> pathlib.Path:
    """Save a random-weight tiny `kind` ("clip" or "siglip") model + processor to `path`; returns it as a Path."""
    if kind not in KINDS:
        raise ValueError(f"unknown dual encoder kind {kind!r}; expected one of {KINDS}")
    path = pathlib.Path(path)
    tokenizer = _tokenizer(kind)
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=16, **ids)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
    size = {"height": 32, "width": 32}
    torch.manual_seed(seed)
    if kind == "clip":
        config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
        model = transformers.CLIPModel(config)
        image = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=size)
        processor = transformers.CLIPProcessor(image_processor=image, tokenizer=tokenizer)
    else:
        config = transformers.SiglipConfig(text_config={**text, "projection_size": 32}, vision_config=vision)
        model = transformers.SiglipModel(config)
        image = transformers.SiglipImageProcessor(size=size)
        processor = transformers.SiglipProcessor(image_processor=image, tokenizer=tokenizer)
    model.eval().save_pretrained(path)
    processor.save_pretrained(path)
    return path
