"""The Visual Memory Retriever: embedders (tiny CLIP / SigLIP, the 5 VLM families), the clip index (faiss and
torch), retrieval and the episodic video, and `vidpress profile / generate --retrieve`."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_dual_encoders import build_tiny_dual_encoder

from vidpress import video
from vidpress.cli import main
from vidpress.retrieval import (
    CLIPEmbedder,
    ClipIndex,
    VideoMemory,
    VisualMemoryRetriever,
    VLMEmbedder,
)
from vidpress.retrieval import index as index_module
from vidpress.testing import FAMILIES, tiny_video

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "dark red": (140, 10, 20)}


class ColourEmbedder:
    """Frames -> mean RGB; a text -> the RGB of the colour it names: retrieval with a known right answer."""

    def embed_frames(self, frames):
        return F.normalize(torch.as_tensor(np.asarray(frames)).float().mean((1, 2)), dim=-1)

    def embed_text(self, texts):
        return F.normalize(torch.tensor([COLOURS[t] for t in texts], dtype=torch.float32), dim=-1)


def colour_video(order=("red", "green", "blue", "dark red"), length=10, size=32, seed=0):
    """Scenes of `length` frames, each a noisy field of one colour: uint8 [len(order) * length, size, size, 3]."""
    rng = np.random.RandomState(seed)
    scenes = [np.array(COLOURS[c]) + rng.randint(-10, 11, size=(length, size, size, 3)) for c in order]
    return np.concatenate(scenes).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def dual_encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("dual")
    return {kind: build_tiny_dual_encoder(kind, root / kind) for kind in ("clip", "siglip")}


# ----------------------------------------------------------------------------------------------- embedders


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_clip_style_embedders_from_a_local_folder(dual_encoders, kind):
    embedder = CLIPEmbedder.from_pretrained(dual_encoders[kind], batch_size=2)
    frames = tiny_video(5, 40, 60)
    images = embedder.embed_frames(frames)
    texts = embedder.embed_text(["a man rides a bike", "where is the rabbit?"])
    width = embedder.model.config.projection_dim if kind == "clip" else 32
    assert images.shape == (5, width) and texts.shape == (2, width)
    assert torch.allclose(images.norm(dim=1), torch.ones(5)) and torch.allclose(texts.norm(dim=1), torch.ones(2))
    # batching does not change a frame's embedding; different texts differ
    assert torch.allclose(CLIPEmbedder(embedder.model, embedder.processor, batch_size=32).embed_frames(frames),
                          images, atol=1e-5)
    assert not torch.allclose(texts[0], texts[1])


def test_clip_embedder_bad_input(dual_encoders, tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        CLIPEmbedder.from_pretrained(tmp_path / "nothing")
    embedder = CLIPEmbedder.from_pretrained(dual_encoders["clip"])
    with pytest.raises(ValueError, match="non-empty strings"):
        embedder.embed_text([""])
    with pytest.raises(ValueError, match="uint8"):
        embedder.embed_frames(np.zeros((2, 8, 8, 3), np.float32))


@pytest.mark.parametrize("family", FAMILIES)
def test_vlm_embedder_for_every_family(tiny_model, family):
    model, processor = tiny_model(family)
    frames = np.concatenate([tiny_video(2, 56, 56, seed=0), tiny_video(1, 56, 56, seed=5)])
    embedder = VLMEmbedder(model, processor, batch_size=2)
    images = embedder.embed_frames(frames)
    width = model.config.get_text_config().hidden_size
    assert images.shape == (3, width) and torch.allclose(images.norm(dim=1), torch.ones(3))
    # one frame at a time gives the same embedding: frames do not mix inside a batch
    assert torch.allclose(embedder.embed_frames(frames[2:]), images[2:], atol=1e-4)
    # the same scene stays closer than another scene
    assert images[0] @ images[1] > images[0] @ images[2]
    texts = embedder.embed_text(["What happens?", "Describe the image."])
    assert texts.shape == (2, width) and not torch.allclose(texts[0], texts[1])


# ----------------------------------------------------------------------------------------------- the index


def test_faiss_and_torch_backends_agree():
    pytest.importorskip("faiss")
    torch.manual_seed(0)
    vectors, queries = torch.randn(50, 24), torch.randn(7, 24)
    ranges = [(10 * i, 10 * i + 10) for i in range(50)]
    results = []
    for backend in ("faiss", "torch"):
        index = ClipIndex(24, backend)
        index.add(vectors[:30], ranges[:30])
        index.add(vectors[30:], ranges[30:])
        results.append(index.search(queries, 5))
    assert torch.equal(results[0][1], results[1][1])
    assert torch.allclose(results[0][0], results[1][0], atol=1e-5)
    expected = (F.normalize(queries, dim=1) @ F.normalize(vectors, dim=1).T).topk(5).indices
    assert torch.equal(results[1][1], expected)


def test_index_save_load_round_trip(tmp_path):
    torch.manual_seed(1)
    index = ClipIndex(8, "torch", metadata={"video": "x.mp4"})
    index.add(torch.randn(4, 8), [(0, 5), (5, 9), (9, 20), (20, 21)])
    index.save(tmp_path / "idx")
    loaded = ClipIndex.load(tmp_path / "idx")
    assert loaded.ranges == index.ranges and loaded.metadata == {"video": "x.mp4"}
    query = torch.randn(8)
    scores, ids = loaded.search(query, 10)  # k above the size gives every clip
    assert ids.shape == (4,) and torch.equal(ids, index.search(query, 4)[1])
    assert torch.all(scores[:-1] >= scores[1:])


def test_index_resave_interrupted_keeps_the_old_index(tmp_path, monkeypatch):
    torch.manual_seed(2)
    old = ClipIndex(8, "torch", metadata={"video": "old.mp4"})
    old.add(torch.randn(3, 8), [(0, 1), (1, 2), (2, 3)])
    old.save(tmp_path / "idx")
    new = ClipIndex(8, "torch", metadata={"video": "new.mp4"})
    new.add(torch.randn(5, 8), [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)])

    # Killed while writing the second file: nothing of the new save is visible, no temporary file is left.
    real_write_text = Path.write_text

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        new.save(tmp_path / "idx")
    monkeypatch.setattr(Path, "write_text", real_write_text)
    assert (sorted(p.name for p in (tmp_path / "idx").iterdir())
            == [index_module.EMBEDDINGS_FILE, index_module.META_FILE])
    loaded = ClipIndex.load(tmp_path / "idx")
    assert loaded.metadata == {"video": "old.mp4"} and torch.allclose(loaded.embeddings, old.embeddings)

    # Killed between the two renames: the mixed pair is refused, never read as one index.
    real_replace = os.replace
    calls = []

    def replace_once(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(index_module.os, "replace", replace_once)
    with pytest.raises(KeyboardInterrupt):
        new.save(tmp_path / "idx")
    monkeypatch.setattr(index_module.os, "replace", real_replace)
    with pytest.raises(ValueError, match="two different saves"):
        ClipIndex.load(tmp_path / "idx")
    new.save(tmp_path / "idx")  # a complete save repairs it
    assert ClipIndex.load(tmp_path / "idx").metadata == {"video": "new.mp4"}


def test_index_falls_back_to_torch_without_faiss(monkeypatch):
    monkeypatch.setattr(index_module, "faiss_available", lambda: False)
    assert ClipIndex(4).backend == "torch"
    with pytest.raises(ImportError, match="faiss-cpu"):
        ClipIndex(4, "faiss")


def test_index_bad_input(tmp_path):
    index = ClipIndex(4, "torch")
    with pytest.raises(ValueError, match="empty"):
        index.search(torch.randn(4), 1)
    with pytest.raises(ValueError, match=r"shape \[C, 4\]"):
        index.add(torch.randn(2, 5), [(0, 1), (1, 2)])
    with pytest.raises(ValueError, match="one \\(start, end\\) per clip"):
        index.add(torch.randn(2, 4), [(0, 1)])
    index.add(torch.randn(2, 4), [(0, 1), (1, 2)])
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        index.search(torch.randn(4), 0)
    with pytest.raises(ValueError, match=r"query must be a tensor \[4\]"):
        index.search(torch.randn(3), 1)
    with pytest.raises(ValueError, match="no saved clip index"):
        ClipIndex.load(tmp_path)


def _without(meta: dict, key: str) -> str:
    return json.dumps({k: v for k, v in meta.items() if k != key})


@pytest.mark.parametrize("edit,message", [
    (lambda meta: _without(meta, "dim"), r"missing field\(s\) dim"),
    (lambda meta: _without(meta, "ranges"), r"missing field\(s\) ranges"),
    (lambda meta: json.dumps({**meta, "dim": "8"}), "dim must be a positive integer"),
    (lambda meta: json.dumps({**meta, "ranges": [[0, 1], "x"]}), r"frame ranges must be \(start, end\) pairs"),
    (lambda meta: json.dumps([meta]), "must be a JSON object; the file holds a JSON array"),
    (lambda meta: "{broken", r"not valid JSON \(.* at line 1 column 2"),
    (lambda meta: "", "is empty"),
])
def test_index_load_names_the_broken_file_and_the_problem(tmp_path, edit, message):
    index = ClipIndex(8, "torch")
    index.add(torch.randn(2, 8), [(0, 1), (1, 2)])
    index.save(tmp_path)
    path = tmp_path / index_module.META_FILE
    path.write_text(edit(json.loads(path.read_text())))
    with pytest.raises(ValueError, match=message) as caught:
        ClipIndex.load(tmp_path)
    assert str(path) in str(caught.value)


def test_index_load_names_truncated_embeddings(tmp_path):
    index = ClipIndex(8, "torch")
    index.add(torch.randn(2, 8), [(0, 1), (1, 2)])
    index.save(tmp_path)
    path = tmp_path / index_module.EMBEDDINGS_FILE
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="not a complete safetensors file") as caught:
        ClipIndex.load(tmp_path)
    assert str(path) in str(caught.value)


# ----------------------------------------------------------------------------------------------- retrieval


def test_retrieve_finds_the_clips_that_match_the_question():
    frames = colour_video()
    retriever = VisualMemoryRetriever(ColourEmbedder(), top_k=2, backend="torch")
    memory = retriever.index_video(frames)
    assert memory.clips == [(0, 10), (10, 20), (20, 30), (30, 40)] and memory.num_frames == 40
    assert retriever.retrieve(memory, "red") == [(0, 10), (30, 40)]  # both reddish clips, in time order
    assert retriever.retrieve(memory, "blue", k=1) == [(20, 30)]
    episode, indices = retriever.episodic_video(frames, "green", k=1)
    assert torch.equal(indices, torch.arange(10, 20)) and np.array_equal(episode, frames[10:20])


def test_episodic_video_from_sampled_frames_of_an_indexed_video(tmp_path):
    frames = colour_video(("blue", "red", "green"), length=12)
    retriever = VisualMemoryRetriever(ColourEmbedder(), top_k=1, frames_per_clip=3)
    retriever.index_video(frames).save(tmp_path / "memory")
    memory = VideoMemory.load(tmp_path / "memory")  # indexed once, queried later
    sampled = np.arange(0, 36, 5)  # 0, 5, ..., 35
    episode, indices = retriever.episodic_video(frames[sampled], "red", memory=memory, frame_indices=sampled)
    assert indices.tolist() == [15, 20] and np.array_equal(episode, frames[[15, 20]])
    # a clip holding no sampled frame cannot be retrieved: the next best one is
    sparse = np.array([0, 30])
    _, indices = retriever.episodic_video(frames[sparse], "red", memory=memory, frame_indices=sparse)
    assert indices.numel() == 1


def test_index_a_video_file(tmp_path):
    retriever = VisualMemoryRetriever(ColourEmbedder(), frames_per_clip=2)
    memory = retriever.index_video(video.sample_video("demo"))
    assert memory.clips == [(0, 26), (26, 87), (87, 125)] and memory.source.endswith("demo.mp4")
    assert len(retriever.retrieve(memory, "blue")) == 3


def test_retrieval_with_real_embedders(tiny_model, dual_encoders):
    model, processor = tiny_model("llava_onevision")
    frames = np.concatenate([tiny_video(6, 56, 56, seed=s) for s in (0, 7, 9)])
    for embedder in (VLMEmbedder(model, processor), CLIPEmbedder.from_pretrained(dual_encoders["siglip"])):
        retriever = VisualMemoryRetriever(embedder, top_k=2)
        memory = retriever.index_video(frames)
        clips = retriever.retrieve(memory, "What colour is the square?")
        assert len(clips) == min(2, len(memory.clips)) and clips == sorted(clips)
        episode, indices = retriever.episodic_video(frames, "What colour is the square?", memory=memory)
        assert len(episode) == sum(end - start for start, end in clips) == len(indices)


def test_retriever_bad_input(dual_encoders):
    retriever = VisualMemoryRetriever(ColourEmbedder())
    frames = colour_video()
    memory = retriever.index_video(frames)
    with pytest.raises(ValueError, match="k \\(clips to retrieve\\) must be an integer >= 1"):
        retriever.retrieve(memory, "red", k=0)
    with pytest.raises(ValueError, match="k \\(clips to retrieve\\)"):
        VisualMemoryRetriever(ColourEmbedder(), top_k=0)
    with pytest.raises(ValueError, match="N >= 1"):
        retriever.index_video(frames[:0])
    with pytest.raises(ValueError, match="different embedder"):
        VisualMemoryRetriever(CLIPEmbedder.from_pretrained(dual_encoders["clip"])).retrieve(memory, "red")
    with pytest.raises(ValueError, match="belongs to another video"):
        retriever.episodic_video(frames[:2], "red", memory=memory, frame_indices=[10, 400])
    with pytest.raises(ValueError, match="lacks embed_frames"):
        VisualMemoryRetriever(object())
    with pytest.raises(video.VideoDecodeError):
        retriever.index_video("/no/such/video.mp4")


# ----------------------------------------------------------------------------------------------- the CLI


def test_profile_reports_the_vision_encoder_saving(tmp_path, capsys):
    path = tmp_path / "profile.json"
    argv = ["profile", "--frames", "16", "--resolution", "112", "--repeats", "1", "--decode-tokens", "2",
            "--retrieve", "1", "--json", str(path), "--quiet"]
    assert main(argv) == 0
    assert "retrieval: top-1 of" in capsys.readouterr().out
    data = json.loads(path.read_text())
    retrieval = data["retrieval"]
    assert retrieval["clips"] == 4 and retrieval["frames_full"] == 16 and retrieval["frames_retrieved"] == 4
    assert retrieval["visual_tokens_retrieved"] * 4 == retrieval["visual_tokens_full"]
    assert 3.5 < retrieval["vision_flops_full"] / retrieval["vision_flops_retrieved"] < 4.5
    assert retrieval["index_ms"] > 0 and retrieval["query_ms"] > 0 and retrieval["index_flops"] > 0
    assert retrieval["setup"]["retrieve"] == 1 and set(data) == {"full", "pressed", "retrieval", "prefill_speedup",
                                                                 "prefill_speedups"}


def test_profile_retrieve_with_a_clip_embedder_on_a_video_file(dual_encoders, capsys):
    argv = ["profile", "--video", str(video.sample_video("demo")), "--frames", "8", "--repeats", "1",
            "--decode-tokens", "2", "--retrieve", "2", "--embedder", str(dual_encoders["clip"]), "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "top-2 of 3 event clips" in out and "CLIPEmbedder" in out


def test_generate_answers_from_the_episodic_video(tiny_model, tiny_cache, capsys):
    tiny_model("qwen3_vl")
    code = main(["generate", "--model", str(tiny_cache / "qwen3_vl"), "--num-frames", "8", "--max-new-tokens", "2",
                 "--repeats", "1", "--retrieve", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "retrieval (VLMEmbedder" in out and "answer:" in out
    kept = int(out.split(" keep ")[1].split(" of ")[0])
    assert 1 <= kept < 8


@pytest.mark.parametrize("argv, message", [
    (["profile", "--retrieve", "0"], "--retrieve must be a number of clips >= 1"),
    (["generate", "--embedder", "somewhere"], "pass --retrieve K too"),
    (["generate", "--retrieve", "2", "--embedder", "/no/such/folder", "--num-frames", "4"], "not a directory"),
])
def test_retrieve_options_bad_input(argv, message, capsys):
    assert main([*argv, "--quiet"] if argv[0] == "profile" else argv) == 2
    assert message in capsys.readouterr().err
