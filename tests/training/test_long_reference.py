"""`vidpress train long-reference`: a tiny run trains the language side only and writes its model card."""

import json

import pytest
import torch

from vidpress.synthetic.reference import load_reference
from vidpress.training.long_reference import train_long_reference


@pytest.mark.slow
def test_a_tiny_long_reference_run_trains_the_language_side_only(tmp_path):
    metrics = train_long_reference(tmp_path, long_examples=4, replay_examples=4, steps=2, batch_size=4,
                                   test_long=4, test_short=0, threads=1, progress=False)
    assert set(metrics["before"]) == {"long"} and metrics["after"]["long"]["examples"] == 4
    trained, _ = load_reference(tmp_path)
    base, _ = load_reference()
    assert all(torch.equal(a, b) for a, b in zip(trained.model.visual.parameters(), base.model.visual.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(trained.model.language_model.parameters(),
                                                    base.model.language_model.parameters()))
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 2
    assert "long-reference" in (tmp_path / "MODEL_CARD.md").read_text()
