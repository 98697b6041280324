"""`ClipIndex`: exact nearest-neighbour search over L2-normalised clip embeddings, saved with safetensors + JSON.

The inner product of unit vectors is their cosine, so a flat inner-product index is exact cosine search:
faiss `IndexFlatIP` when faiss is importable, else (or with `backend="torch"`) one matrix product in torch.
Both return the same neighbours. Every vector carries its clip's half-open frame range [start, end).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from vidpress.files import read_json, require_keys

BACKENDS = ("auto", "faiss", "torch")
EMBEDDINGS_FILE = "clip_embeddings.safetensors"
META_FILE = "clip_index.json"
FORMAT_VERSION = 1


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class ClipIndex:
    """Nearest-neighbour index over clip embeddings of width `dim`.

    Args:
        dim: embedding width D.
        backend: "faiss" (IndexFlatIP), "torch" (a matrix product), or "auto" (faiss when importable).
        metadata: JSON-serialisable facts saved with the index (e.g. the video's frame count and path).
    """

    dim: int
    backend: str = "auto"
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"dim must be a positive integer; got {self.dim!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {self.backend!r}")
        if self.backend == "auto":
            self.backend = "faiss" if faiss_available() else "torch"
        elif self.backend == "faiss" and not faiss_available():
            raise ImportError("backend='faiss' needs faiss: pip install faiss-cpu (or use backend='torch')")
        self.embeddings = torch.empty(0, self.dim)
        self.ranges: list[tuple[int, int]] = []
        if self.backend == "faiss":
            import faiss

            self._faiss = faiss.IndexFlatIP(self.dim)

    def __len__(self) -> int:
        return len(self.ranges)

    def add(self, embeddings: torch.Tensor, ranges: list[tuple[int, int]]) -> None:
        """Add clip embeddings [C, D] (or one [D]) with their frame ranges [(start, end)] (one per row).

        Rows are L2-normalised here, so search scores are cosines.
        """
        if not isinstance(embeddings, torch.Tensor):
            raise ValueError(f"embeddings must be a tensor [C, {self.dim}]; got {type(embeddings).__name__}")
        embeddings = embeddings[None] if embeddings.dim() == 1 else embeddings
        if embeddings.dim() != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(
                f"embeddings must have shape [C, {self.dim}] for this index; got {tuple(embeddings.shape)}")
        if not torch.isfinite(embeddings).all():
            raise ValueError("embeddings contain NaN or Inf values")
        try:
            ranges = [tuple(int(x) for x in r) for r in ranges]
        except (TypeError, ValueError):
            raise ValueError(f"frame ranges must be (start, end) pairs of integers; got {ranges!r:.80}") from None
        if len(ranges) != embeddings.shape[0]:
            raise ValueError(f"got {embeddings.shape[0]} embeddings but {len(ranges)} frame ranges; "
                             "pass one (start, end) per clip")
        if any(len(r) != 2 or not 0 <= r[0] < r[1] for r in ranges):
            raise ValueError(f"frame ranges must be (start, end) with 0 <= start < end; got {ranges}")
        vectors = F.normalize(embeddings.detach().float().cpu(), dim=-1)
        self.embeddings = torch.cat([self.embeddings, vectors])
        self.ranges.extend(ranges)
        if self.backend == "faiss":
            self._faiss.add(vectors.numpy())

    def search(self, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k clips most similar to `query` [D] (or [Q, D]): (cosines, clip ids), best first.

        Shapes [k] for one query, [Q, k] for Q; k larger than the index gives all its clips.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1; got {k!r}")
        if not len(self):
            raise ValueError("the index is empty; add clip embeddings first")
        if not isinstance(query, torch.Tensor) or query.dim() not in (1, 2) or query.shape[-1] != self.dim:
            shape = tuple(query.shape) if isinstance(query, torch.Tensor) else type(query).__name__
            raise ValueError(f"query must be a tensor [{self.dim}] or [Q, {self.dim}] for this index; got {shape}")
        single = query.dim() == 1
        queries = F.normalize(query.detach().float().cpu().reshape(-1, self.dim), dim=-1)
        k = min(k, len(self))
        if self.backend == "faiss":
            scores, ids = self._faiss.search(queries.contiguous().numpy(), k)
            scores, ids = torch.from_numpy(scores), torch.from_numpy(ids).long()
        else:
            scores, ids = (queries @ self.embeddings.T).topk(k, dim=-1)
        return (scores[0], ids[0]) if single else (scores, ids)

    def save(self, directory) -> Path:
        """Write the embeddings (safetensors) and the ranges + metadata (JSON) into `directory`; returns it.

        Both files are written in full under temporary names first and then renamed over the old ones, so an
        interrupted re-save leaves the previous index intact. Both carry the same save id: `load` refuses a
        pair from two different saves (an interruption between the two renames) instead of mixing them.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_id = uuid.uuid4().hex
        meta = {"format_version": FORMAT_VERSION, "dim": self.dim, "ranges": [list(r) for r in self.ranges],
                "metadata": self.metadata, "save_id": save_id}
        tmp_embeddings = directory / f".{EMBEDDINGS_FILE}.{save_id}.tmp"
        tmp_meta = directory / f".{META_FILE}.{save_id}.tmp"
        try:
            save_file({"embeddings": self.embeddings.contiguous()}, str(tmp_embeddings), metadata={"save_id": save_id})
            tmp_meta.write_text(json.dumps(meta, indent=1))
            for path in (tmp_embeddings, tmp_meta):  # on disk before the renames make them the index
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
            os.replace(tmp_embeddings, directory / EMBEDDINGS_FILE)
            os.replace(tmp_meta, directory / META_FILE)
        finally:
            tmp_embeddings.unlink(missing_ok=True)
            tmp_meta.unlink(missing_ok=True)
        return directory

    @classmethod
    def load(cls, directory, backend: str = "auto") -> ClipIndex:
        """An index saved by `save`, searched with `backend`."""
        directory = Path(directory)
        if not (directory / META_FILE).is_file() or not (directory / EMBEDDINGS_FILE).is_file():
            raise ValueError(f"{directory} holds no saved clip index (expected {META_FILE} and {EMBEDDINGS_FILE})")
        meta_path = directory / META_FILE
        meta = read_json(meta_path, "clip index metadata")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{directory}: clip index format {meta.get('format_version')!r}; this vidpress reads {FORMAT_VERSION}")
        require_keys(meta, ("format_version", "dim", "ranges"), str(meta_path))
        if not isinstance(meta["ranges"], list):
            raise ValueError(f"{meta_path}: ranges must be a list of [start, end] frame ranges; "
                             f"got {meta['ranges']!r:.80}")
        if isinstance(meta["dim"], bool) or not isinstance(meta["dim"], int) or meta["dim"] < 1:
            raise ValueError(f"{meta_path}: dim must be a positive integer (the embedding width); got {meta['dim']!r}")
        index = cls(meta["dim"], backend, meta.get("metadata", {}))
        try:
            with safe_open(str(directory / EMBEDDINGS_FILE), framework="pt") as handle:
                embeddings_id = (handle.metadata() or {}).get("save_id")
                embeddings = handle.get_tensor("embeddings")
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{directory / EMBEDDINGS_FILE}: cannot read the clip embeddings ({error}); it is not a "
                             "complete safetensors file with an 'embeddings' tensor: save the index again") from None
        if embeddings_id != meta.get("save_id"):  # indexes saved before save ids existed carry neither
            raise ValueError(f"{directory}: {EMBEDDINGS_FILE} and {META_FILE} come from two different saves (an "
                             "interrupted re-save); save the index again")
        if embeddings.shape != (len(meta["ranges"]), meta["dim"]):
            raise ValueError(f"{directory}: {tuple(embeddings.shape)} embeddings do not match {len(meta['ranges'])} "
                             f"clips of width {meta['dim']}")
        if len(embeddings):
            try:
                index.add(embeddings, meta["ranges"])
            except ValueError as error:
                raise ValueError(f"{meta_path}: {error}") from None
        return index
