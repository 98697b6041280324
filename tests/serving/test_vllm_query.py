"""The question handed to query-aware presses inside vLLM (vidpress.serving.vllm_query) equals the Query of
vidpress's transformers path for the same prompt. Runs without vLLM."""

from dataclasses import dataclass

import pytest
import torch

from vidpress.models.query import end_of_turn_ids as end_of_turn
from vidpress.presses.base import Press
from vidpress.presses.cacovid import _rows
from vidpress.serving.vllm_query import end_of_turn_ids, query_from_fields, qwen2_5_vl_video_queries
from vidpress.testing import make_inputs, tiny_model_and_processor, tiny_video
from vidpress.types import Selection


@dataclass
class RecordQuery(Press):
    """Test glue: a query-aware press that records each video's Query and keeps the first half of its tokens."""

    query_aware = True

    def __post_init__(self):
        super().__post_init__()
        self.queries = []

    def compress(self, tokens, query):
        self.queries.append(query)
        return Selection(torch.arange(tokens.num_tokens // 2), tokens.num_tokens)


@pytest.mark.parametrize("layout", ["one video", "image and two videos"])
def test_served_query_equals_the_transformers_query(layout):
    model, processor = tiny_model_and_processor("qwen2_5_vl")
    videos = [tiny_video(8, 56, 84, seed=1)] + ([tiny_video(6, 84, 56, seed=2)] if layout != "one video" else [])
    images = [tiny_video(1, 56, 56, seed=3)[0]] if layout != "one video" else None
    inputs = make_inputs(processor, videos, "Which colour comes first?", images=images, fps=3.0)
    press = RecordQuery(retention=0.5)
    with torch.no_grad(), press(model):
        model(**inputs)
    config = model.config
    served = qwen2_5_vl_video_queries(
        inputs["input_ids"][0].tolist(), config.video_token_id, config.image_token_id, config.vision_end_token_id,
        end_of_turn_ids(config, model.generation_config.to_diff_dict()),
        [tuple(g) for g in inputs["video_grid_thw"].tolist()],
        [tuple(g) for g in inputs["image_grid_thw"].tolist()] if images else [],
        inputs["second_per_grid_ts"].tolist(), config.vision_config.spatial_merge_size,
        config.vision_config.tokens_per_second)
    assert end_of_turn_ids(config, model.generation_config.to_diff_dict()) == end_of_turn(model)
    assert len(served) == len(press.queries) == len(videos)
    for fields, expected in zip(served, press.queries):
        query = query_from_fields(*fields.values(), model.get_input_embeddings())
        assert torch.equal(query.token_ids, expected.token_ids)
        assert torch.equal(query.embeddings, expected.embeddings)
        assert torch.equal(query.question_mask, expected.question_mask)
        assert torch.equal(query.position_ids, _rows(expected.position_ids, 3))
        assert torch.equal(query.video_position_ids, _rows(expected.video_position_ids, 3))
        assert query.video_offset == expected.video_offset


def test_more_placeholders_than_items_is_refused():
    with pytest.raises(ValueError, match="more video placeholders"):
        qwen2_5_vl_video_queries([1, 9, 2, 9], 9, None, None, [], [(2, 4, 4)], [], [1.0], 2, 2.0)
