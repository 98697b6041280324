"""`vidpress train clip-retriever` and the shipped dual encoder it trained (vidpress/synthetic/clip_retriever)."""

import json

import numpy as np
import pytest
import torch

from vidpress.cli import main
from vidpress.evaluation.long_retrieval import asked_hit, retrieval_recall
from vidpress.retrieval import CLIPEmbedder, VisualMemoryRetriever
from vidpress.synthetic import make_split
from vidpress.synthetic.long import LongConfig
from vidpress.synthetic.reference import CLIP_RETRIEVER_DIR
from vidpress.synthetic.world import FLASH_SHAPES
from vidpress.training.clip_retriever import clip_batch, clip_loss, frame_pools


def test_clip_batch_matches_a_text_to_the_frames_of_the_flash_it_names_only():
    examples = make_split("train", 4, families=("long",), config=LongConfig(key="colour")) + make_split(
        "train", 2, families=("long",), config=LongConfig(key="shape"))
    assert {e.info["key"] for e in examples} == {"colour", "shape"}
    for example in examples:
        frames, texts, match, windows, window_match = clip_batch([example], np.random.default_rng(0))
        asked, distractor, empty = frame_pools(example)
        assert asked and not set(asked) & set(distractor) and not set(asked) & set(empty)
        assert texts == [example.prompt] and frames.dtype == np.uint8 and frames.shape[1:] == (56, 56, 3)
        # the asked frames come first and match; the clip's distractor flashes (other colours) and empty frames
        # do not; then 3 windows of at most 8 frames
        negatives = min(6, len(distractor)) + min(2, len(empty))
        assert match[0].tolist()[: len(asked) + negatives] == [True] * len(asked) + [False] * negatives
        assert len(windows) == 3 and all(1 < len(w) <= 8 for w in windows)
        assert sorted(r for w in windows for r in w) == list(range(len(asked) + negatives, len(frames)))
        for w, rows in enumerate(windows):  # a window matches when one of its frames does
            assert bool(window_match[0, w]) == bool(match[0, rows].any())
    frames, texts, match, windows, window_match = clip_batch(examples, np.random.default_rng(0))
    assert texts == list(dict.fromkeys(e.prompt for e in examples)) and match.shape == (len(texts), len(frames))
    assert match.any(1).all() and window_match.shape == (len(texts), 18)
    with pytest.raises(ValueError, match="long-family examples"):
        clip_batch(make_split("train", 1), np.random.default_rng(0))


def test_clip_loss_is_low_for_aligned_embeddings():
    text = torch.eye(4)[:2]
    image = torch.eye(4)[[0, 0, 1, 2, 3]]
    match = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 1, 0, 0]], dtype=torch.bool)
    scale = torch.tensor(np.log(100.0))
    aligned = clip_loss(text, image, match, scale)
    swapped = clip_loss(text.flip(0), image, match, scale)
    assert aligned < 0.8 and swapped > 10 * aligned


def test_train_clip_retriever_end_to_end_and_loads_with_clip_embedder(tmp_path, capsys):
    out = tmp_path / "dual"
    assert main(["train", "clip-retriever", "--out", str(out), "--train-examples", "8", "--steps", "3",
                 "--batch-size", "4", "--keys", "colour,shape", "--test-examples", "2", "--threads", "1",
                 "--quiet"]) == 0
    assert "test top-1" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and len(metrics["log"]) == 2 and metrics["keys"] == ["colour", "shape"]
    assert {key: t["examples"] for key, t in metrics["test"].items()} == {"colour": 2, "shape": 2}
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Recipe" in card and "## Retrieval on the long family" in card and "Command:" in card
    embedder = CLIPEmbedder.from_pretrained(out)
    example = make_split("test", 1, families=("long",))[0]
    assert embedder.embed_frames(example.video[:3]).shape == (3, 64)
    assert embedder.embed_text([example.prompt]).shape == (1, 64)


def test_train_clip_retriever_refuses_bad_counts(tmp_path, capsys):
    assert main(["train", "clip-retriever", "--out", str(tmp_path), "--windows", "-1"]) == 2
    assert "--windows" in capsys.readouterr().err
    assert main(["train", "clip-retriever", "--out", str(tmp_path), "--keys", "colour,size"]) == 2
    assert "key must be" in capsys.readouterr().err


@pytest.fixture(scope="module")
def shipped():
    return CLIPEmbedder.from_pretrained(CLIP_RETRIEVER_DIR)


def test_shipped_clip_retriever_is_small_and_documented():
    files = {p.name: p.stat().st_size for p in CLIP_RETRIEVER_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "metrics.json",
            "MODEL_CARD.md"} <= set(files)
    assert sum(files.values()) < 2_000_000
    metrics = json.loads((CLIP_RETRIEVER_DIR / "metrics.json").read_text())
    card = (CLIP_RETRIEVER_DIR / "MODEL_CARD.md").read_text()
    for key, test in metrics["test"].items():
        assert f"| {key} | 240 |" in card and f"{test['top3']:.3f}" in card and test["examples"] == 240


def test_shipped_clip_retriever_finds_the_asked_event(shipped):
    # trained on shape-keyed questions ("What colour was the flashing ring?"), the long family's ring key included
    examples = make_split("test", 4, families=("long",), config=LongConfig(key="shape"))
    retriever = VisualMemoryRetriever(shipped, top_k=3)
    for example in examples:
        # the frame closest to the question shows the asked event, not a distractor flash of another shape
        scores = shipped.embed_frames(example.video) @ shipped.embed_text([example.prompt])[0]
        assert int(scores.argmax()) in example.info["objects"][0]["frames"]
        memory = retriever.index_video(example.video)
        assert asked_hit(retriever.retrieve(memory, example.prompt), example)
    # the texts of the four shapes are told apart
    texts = shipped.embed_text([f"What colour was the flashing {s}?" for s in FLASH_SHAPES])
    assert (texts @ texts.T - torch.eye(4)).max() < 0.9
    recall = retrieval_recall(shipped, examples[:2])
    assert recall["top3"] == 1.0 and recall["frame_top1"] == 1.0
