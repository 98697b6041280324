"""`CaCoVIDPolicy.from_released`: the authors' checkpoint layout (a whole LLaVA-OneVision folder, sharded safetensors
with an index, the policy under `compression_policy.*`, its knobs in config.json's vision_config), written here from a
tiny random-weight model."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlavaOnevisionForConditionalGeneration

from vidpress.presses.cacovid import RELEASED_CONFIG_FIELDS, CaCoVIDPolicy, CaCoVIDPress
from vidpress.testing import build_tiny_model, make_inputs, tiny_video

#: values only need to be present; these are the release's evaluation setting at R = 0.25 where it has one
RELEASED_FIELDS = {"apply_compression": True, "compression_policy": "cacovid", "imp_ratio": 0.5,
                   "max_sample_ratio_for_each_frame": 0.375, "topk": 0.25, "max_sample_rate": 0.12,
                   "frame_ratio": 0.125, "group_size": 8, "max_group_prob": 0.9, "sample_mode_num": 8}


def released_policy_weights(vlm_state: dict, width: int, seed: int = 0) -> dict:
    """The released policy keys: a copy of the LLM's first decoder layer, the shared norm, three 5-layer heads (the
    mode head ends in 3 outputs)."""
    g = torch.Generator().manual_seed(seed)
    prefix = "language_model.model.layers.0."
    weights = {f"compression_policy.layers.0.{k.removeprefix(prefix)}": v + 0.01 * torch.randn(v.shape, generator=g)
               for k, v in vlm_state.items() if k.startswith(prefix)}
    weights["compression_policy.layernorm.weight"] = torch.rand(width, generator=g) + 0.5
    for head, outputs in (("token_compress", 2), ("frame_compress", 2), ("mode_selection", 3)):
        dims = [width, width // 2, width // 4, width // 8, width // 16, outputs]
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            weights[f"compression_policy.{head}.{2 * i}.weight"] = torch.randn(b, a, generator=g) / a**0.5
            weights[f"compression_policy.{head}.{2 * i}.bias"] = torch.randn(b, generator=g) * 0.1
    return weights


def write_shards(folder, state: dict) -> None:
    """Two shards plus model.safetensors.index.json, the policy keys spread over both."""
    keys = sorted(state)
    parts = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for stale in folder.glob("model*.safetensors*"):
        stale.unlink()
    for file, part in parts.items():
        save_file({k: state[k].contiguous() for k in part}, folder / file, metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
             "weight_map": {k: file for file, part in parts.items() for k in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """(folder, VLM state dict, policy weights) of a tiny checkpoint in the released layout."""
    folder = build_tiny_model("llava_onevision", tmp_path_factory.mktemp("cacovid") / "CaCoVID_LLaVA-OneVision")
    vlm_state = load_file(folder / "model.safetensors")
    assert "image_newline" in vlm_state and "language_model.lm_head.weight" in vlm_state  # the released VLM names
    config = json.loads((folder / "config.json").read_text())
    width = config["text_config"]["hidden_size"]
    config["vision_config"].update(RELEASED_FIELDS)
    (folder / "config.json").write_text(json.dumps(config))
    policy_weights = released_policy_weights(vlm_state, width)
    write_shards(folder, {**vlm_state, **policy_weights})
    return folder, vlm_state, policy_weights


def test_the_policy_and_the_vlm_load_from_one_released_folder(released, tiny_model):
    folder, vlm_state, policy_weights = released
    policy = CaCoVIDPolicy.from_released(folder)
    assert policy.config["released"] == RELEASED_FIELDS and set(RELEASED_FIELDS) == set(RELEASED_CONFIG_FIELDS)
    state = policy.state_dict()
    names = {"layers.0.": "layer.", "layernorm.": "norm.", "token_compress.": "token_head.",
             "frame_compress.": "frame_head.", "mode_selection.": "mode_head."}
    for key, value in policy_weights.items():
        short = key.removeprefix("compression_policy.")
        ours = next(o + short.removeprefix(r) for r, o in names.items() if short.startswith(r))
        assert torch.equal(state[ours], value), key
    assert len(state) == len(policy_weights)

    # the VLM loads through the usual from_pretrained; its weights are the tiny model's, the policy keys unused
    vlm = LlavaOnevisionForConditionalGeneration.from_pretrained(folder, attn_implementation="eager").eval()
    reference, processor = tiny_model("llava_onevision")
    inputs = make_inputs(processor, [tiny_video(8)], "What happens?")
    with torch.no_grad():
        assert torch.equal(vlm(**inputs).logits, reference(**inputs).logits)
        with CaCoVIDPress(policy=policy, retention=0.25)(vlm) as pressed:
            vlm(**inputs)
    selection = pressed.last_report.selections[0]
    assert selection.num_kept == int(0.25 * selection.num_tokens)
    _, _, modes = policy([pressed.last_report.videos[0].features], [pressed.last_report.videos[0].grid],
                         [make_query(vlm, inputs)])
    assert modes[0].shape == (3,)


def make_query(vlm, inputs):
    from vidpress.types import Query

    ids = inputs["input_ids"][0]
    return Query(ids, vlm.get_input_embeddings()(ids).detach())


def test_a_saved_released_policy_round_trips(released, tmp_path):
    policy = CaCoVIDPolicy.from_released(released[0])
    policy.save_pretrained(tmp_path)
    loaded = CaCoVIDPolicy.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), policy.state_dict().values()))


def test_a_missing_or_misshaped_key_or_field_names_itself(released, tmp_path):
    folder, vlm_state, policy_weights = released
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((folder / "config.json").read_text())
    weights = dict(policy_weights)
    del weights["compression_policy.layernorm.weight"]
    weights["compression_policy.mode_selection.8.weight"] = weights["compression_policy.mode_selection.8.weight"][:2]
    weights["compression_policy.extra.weight"] = torch.zeros(1)
    write_shards(broken, {**vlm_state, **weights})
    with pytest.raises(ValueError, match=r"missing \(1\): compression_policy\.layernorm\.weight; unexpected \(1\): "
                                         r"compression_policy\.extra\.weight; mis-shaped \(1\): compression_policy\."
                                         r"mode_selection\.8\.weight: \(2, \d+\) in the file, \(3, \d+\) expected"):
        CaCoVIDPolicy.from_released(broken)
    config = json.loads((folder / "config.json").read_text())
    del config["vision_config"]["max_sample_ratio_for_each_frame"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="lacks the released CaCoVID field.s. max_sample_ratio_for_each_frame"):
        CaCoVIDPolicy.from_released(broken)
    with pytest.raises(FileNotFoundError, match="no released CaCoVID checkpoint"):
        CaCoVIDPolicy.from_released(tmp_path / "nowhere")
