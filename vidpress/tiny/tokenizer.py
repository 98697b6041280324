"""The byte-level BPE tokenizer every tiny model uses, trained in-process on a small corpus."""

from __future__ import annotations

import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from vidpress.tiny.family import Family

CORPUS = (
    "What happens? What happens in the video? Describe the video. Describe the image. What colour is the square?",
    "Which object moves? Is the square red, green, blue, yellow, white or black? Answer yes or no.",
    "The red square moves left. The blue square moves right. A green square moves up and down.",
    "How many squares are there? One, two, three, four. The first frame, the last frame, the middle frame.",
    "You are a helpful assistant. user assistant system USER: ASSISTANT:",
    "<0.2 seconds> <0.5 seconds> <1.0 seconds> <1.2 seconds> <2.5 seconds> <3.8 seconds> 0123456789",
    "A small video with moving coloured squares on a dark background. It flashes, then it stops.",
)


def byte_level_bpe(corpus, specials: list[str], vocab_size: int = 400, unk_token: str | None = None) -> Tokenizer:
    """A byte-level BPE `tokenizers.Tokenizer` (~`vocab_size` tokens) trained on `corpus`, `specials` at ids 0..k-1."""
    bpe = Tokenizer(models.BPE(unk_token=unk_token))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    return bpe


def bpe_tokenizer(family: Family, corpus=CORPUS, vocab_size: int = 400) -> transformers.PreTrainedTokenizerFast:
    """Byte-level BPE (~`vocab_size` tokens, trained on `corpus`) with `family`'s special tokens at ids 0..k-1."""
    specials = list(family.specials)
    names = family.token_names
    bpe = byte_level_bpe(corpus, specials, vocab_size, names.get("unk_token"))
    if family.prepend_bos:
        bos = names["bos_token"]
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bpe.token_to_id(bos))]
        )
    media = [t for t in specials if t not in names.values()]
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, extra_special_tokens=media, **names)
