"""CaCoVID training: the combination sampler, the loss and the optimisation (vidpress/training/cacovid.py)."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vidpress.presses.cacovid import CaCoVIDPolicy, CaCoVIDPress
from vidpress.training.cacovid import (
    CONTENT,
    FRAME,
    TOKEN,
    CaCoVIDSettings,
    PolicySample,
    balanced_weights,
    clipped_surrogate,
    density_peak_scores,
    frame_mode_sample,
    frame_surrogate,
    group_bounds,
    group_cap,
    grouped_token_sample,
    mode_advantages,
    next_rate,
    optimise_policy,
    rollout_combinations,
    water_fill,
)
from vidpress.types import Query, VideoTokens

ROOT = Path(__file__).resolve().parents[2]


# --- the combination sampler --------------------------------------------------------------------------------

def test_group_bounds():
    assert group_bounds(16, 4) == [0, 4, 8, 12, 16]
    assert group_bounds(16, 5) == [0, 4, 7, 10, 13, 16]
    assert group_bounds(7, 1) == [0, 7]


@pytest.mark.parametrize("rate", [0.05, 0.125, 0.25])
def test_grouped_sampling_keeps_k_tokens_inside_one_group_per_frame(rate):
    T, M, factor = 6, 16, 2.0
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(T, M, generator=g) * 3
    k = max(1, round(rate * M))
    n_groups = min(max(math.floor(1 / (rate * factor) + 1e-9), 1), M // k)
    bounds = group_bounds(M, n_groups)
    rank = torch.argsort(torch.sort(scores, dim=1, descending=True, stable=True).indices, dim=1)  # rank of each token
    for _ in range(20):
        keep = grouped_token_sample(scores, rate, g, group_factor=factor)
        assert keep.sum(1).tolist() == [k] * T
        for t in range(T):
            ranks = rank[t][keep[t]]
            group = [i for i in range(n_groups) if bounds[i] <= int(ranks.min()) < bounds[i + 1]][0]
            assert bool((ranks < bounds[group + 1]).all())  # all k in the same contiguous group of the ranking


def test_water_fill_caps_and_redistributes_recursively():
    p = water_fill(torch.tensor([0.7, 0.2, 0.1]), 0.5)
    assert torch.allclose(p, torch.tensor([0.5, 0.2 + 0.2 * 2 / 3, 0.1 + 0.2 / 3], dtype=torch.float64))
    # the first redistribution pushes the second entry over the cap: it is capped too, the rest goes to the third
    p = water_fill(torch.tensor([0.6, 0.35, 0.05]), 0.4)
    assert torch.allclose(p, torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64))
    expected = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    assert torch.allclose(water_fill(torch.tensor([1.0, 0.0, 0.0]), 0.5), expected)
    assert torch.equal(water_fill(torch.tensor([1.0]), 0.9), torch.tensor([1.0], dtype=torch.float64))
    assert [group_cap(n) for n in (1, 2, 4, 10, 25)] == [0.9, 0.9, 0.5, 0.2, 0.1]


def test_grouped_sampling_caps_the_best_group():
    M = 16
    # one frame; ranking = index order; group 0 (tokens 0-1) holds 0.66 of the mass
    scores = torch.linspace(8, 0, M)[None]
    g = torch.Generator().manual_seed(0)
    # rate 1/16: k = 1, n_g = 8 groups of 2, cap 2 / 8 = 0.25 on the best group
    first = sum(int(grouped_token_sample(scores, 1 / 16, g)[0, :2].any()) for _ in range(400))
    assert 70 < first < 130, first


def test_in_group_probabilities_are_clamped_relative_to_group_size():
    """One group (n_g = 1, e = 16), k = 1: token 0 holds ~all the softmax mass, but clamped to 2 / e = 1/8 against
    15 tokens at 1 / (2e) = 1/32 it is drawn with probability 0.125 / (0.125 + 15 / 32) = 0.21."""
    scores = torch.zeros(1, 16)
    scores[0, 0] = 10.0
    g = torch.Generator().manual_seed(0)
    hits = sum(int(grouped_token_sample(scores, 1 / 16, g, group_factor=20.0)[0, 0]) for _ in range(600))
    assert 0.16 < hits / 600 < 0.27, hits / 600


def test_rollout_round_composition_and_budget():
    T, M = 8, 16
    settings = CaCoVIDSettings(group=12, diversity_rollouts=1, frame_rollouts=3)
    g = torch.Generator().manual_seed(0)
    features = torch.randn(T, M, 32, generator=g)
    scores, frame_scores = torch.randn(T, M, generator=g), torch.randn(T, generator=g)
    diversity = density_peak_scores(features)
    masks, modes, frames = rollout_combinations(scores, frame_scores, features, diversity, 0.125, settings, g)
    k = 2
    assert masks.shape == (12, T, M) and masks.flatten(1).sum(1).tolist() == [k * T] * 12
    assert modes.tolist() == [CONTENT] + [TOKEN] * 8 + [FRAME] * 3
    top = torch.topk(diversity.flatten(), k * T).indices
    assert masks[0].flatten()[top].all()  # content: diversity only
    topk = torch.zeros(T, M, dtype=torch.bool).scatter_(1, scores.topk(k, dim=1).indices, True)
    assert torch.equal(masks[1], topk)
    assert (masks[1:9].sum(-1) == k).all()  # token mode: k per frame
    assert frames[:9].all() and (frames[9:].sum(1) == 1).all()  # frame mode: ceil(0.125 * 8) = 1 frame holds 16 tokens
    top_frames = frame_scores.topk(1).indices
    assert frames[9].nonzero().squeeze(1).tolist() == top_frames.tolist()  # frame-mode rollout 0: the top frames
    wide, _, wide_frames = rollout_combinations(scores, frame_scores, features, diversity, 0.25, settings, g)
    assert (wide_frames[9:].sum(1) == 2).all() and (wide[9:].flatten(1).sum(1) == 32).all()  # 32 tokens need 2 frames
    later, _, _ = rollout_combinations(scores, frame_scores, features, diversity, 0.125, settings, g)
    assert torch.equal(later[1], topk)  # the top-k rollout is in every round, not only the first


def test_frame_mode_samples_ceil_one_eighth_of_the_frames_and_fills_them_jointly():
    g = torch.Generator().manual_seed(0)
    T, M = 16, 8
    features = torch.randn(T, M, 12, generator=g)
    frame_scores = torch.zeros(T)
    frame_scores[3] = 20.0
    hits = 0
    for _ in range(200):
        keep, picked = frame_mode_sample(frame_scores, features, 6, g)
        assert picked.sum() == 2 and keep.sum() == 6 and not keep[~picked].any()  # ceil(0.125 * 16) = 2 frames
        chosen = picked.nonzero().squeeze(1)
        joint = density_peak_scores(features[chosen]).flatten().topk(6).indices
        assert set((chosen[joint // M] * M + joint % M).tolist()) == set(keep.flatten().nonzero().squeeze(1).tolist())
        hits += int(picked[3])
    # frame 3 holds ~all the softmax mass, but its probability is capped at 3 / T before drawing without replacement
    assert 0.15 < hits / 200 < 0.6, hits / 200


def test_density_peak_scores_prefer_cluster_centres():
    centres = torch.eye(4, 16) * 10
    g = torch.Generator().manual_seed(0)
    x = torch.cat([centres[i] + 0.3 * torch.randn(4, 16, generator=g) for i in range(4)])  # 4 clusters of 4 tokens
    scores = density_peak_scores(x.view(1, 16, 16), neighbours=3).view(16)
    top4 = set((torch.topk(scores, 4).indices // 4).tolist())
    assert top4 == {0, 1, 2, 3}  # one representative per cluster


# --- the loss -----------------------------------------------------------------------------------------------

def test_balanced_weights_give_kept_and_dropped_equal_shares():
    keep = torch.zeros(3, 10, dtype=torch.bool)
    keep[0, :1] = True
    keep[1, :7] = True
    keep[2, :] = True
    w = balanced_weights(keep)
    assert torch.allclose((w * keep).sum(1)[:2], torch.tensor([0.5, 0.5]))
    assert torch.allclose((w * ~keep).sum(1)[:2], torch.tensor([0.5, 0.5]))
    assert torch.allclose(w[0, 0], torch.tensor(0.5)) and torch.allclose(w[0, 1], torch.tensor(0.5 / 9))
    assert torch.allclose(w[2].sum(), torch.tensor(1.0))  # nothing dropped: the kept side takes all


def test_clipped_surrogate_clips_asymmetrically():
    old = torch.zeros(2, 1)
    new = torch.log(torch.tensor([[2.0], [0.5]])).requires_grad_()
    weights = torch.ones(2, 1)
    up = clipped_surrogate(new, old, torch.tensor([1.0, 1.0]), weights)
    assert torch.isclose(up, torch.tensor((1.28 + 0.5) / 2))  # ratio 2 clipped at 1 + 0.28; ratio 0.5 unclipped
    down = clipped_surrogate(new, old, torch.tensor([-1.0, -1.0]), weights)
    assert torch.isclose(down, torch.tensor((-2.0 - 0.8) / 2))  # pessimistic: 2 kept, 0.5 clipped at 1 - 0.2
    up.backward()
    assert new.grad[0, 0] == 0 and new.grad[1, 0] != 0


def test_advantages_are_z_scored_per_mode():
    modes = torch.tensor([CONTENT, TOKEN, TOKEN, TOKEN, FRAME, FRAME, FRAME, FRAME])
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    adv = mode_advantages(rewards, modes)
    token, frame = rewards[1:4], rewards[4:]
    assert adv[0] == 0  # the content rollout enters no loss
    assert torch.allclose(adv[1:4], (token - token.mean()) / (token.std(unbiased=True) + 1e-4))
    assert torch.allclose(adv[4:], (frame - frame.mean()) / (frame.std(unbiased=True) + 1e-4))
    other = rewards.clone()
    other[4:] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert torch.equal(mode_advantages(other, modes)[1:4], adv[1:4])  # frame rewards do not move token advantages
    assert torch.equal(mode_advantages(torch.ones(3), torch.tensor([TOKEN] * 3)), torch.zeros(3))


def test_frame_surrogate_is_an_unweighted_mean_over_sampled_frames():
    scores = torch.zeros(3, requires_grad=True)
    picked = torch.tensor([[True, False, True], [False, True, False]])
    value = frame_surrogate(scores, scores.detach(), picked, torch.tensor([1.0, -4.0]))
    assert torch.isclose(value, torch.tensor((1 + 1 - 4) / 3))  # per rollout it would be (1 - 4) / 2


def test_rate_schedule():
    s = CaCoVIDSettings()
    assert s.rate_start == 0.02 and s.rate_range == (0.01, 0.12) and (s.easy, s.hard) == (0.875, 0.125)
    assert next_rate(0.02, 0.875, s) == 0.01 and next_rate(0.01, 1.0, s) == 0.01
    assert next_rate(0.02, 0.125, s) == 0.04 and next_rate(0.08, 0.0, s) == 0.12
    assert next_rate(0.02, 0.5, s) == 0.02


@pytest.mark.parametrize("value, rate", [(1.0, 0.01), (0.0, 0.08)])
def test_rate_follows_accumulated_token_mode_accuracy_in_training(tiny_model, value, rate):
    """Always right: 0.02 -> 0.01 (the floor); always wrong: doubled after each of 2 rounds, 0.02 -> 0.08."""
    policy = CaCoVIDPolicy.from_vlm(tiny_model("qwen2_5_vl")[0])
    samples = one_token_task(policy.hidden_size, 2, seed=5)
    settings = CaCoVIDSettings(group=6, diversity_rollouts=1, frame_rollouts=2, rounds=2, batch_size=2, lr=1e-3)
    history = optimise_policy(policy, samples, lambda batch, masks: [torch.full((m.shape[0],), value) for m in masks],
                              settings, progress=False)
    assert history[0]["rate"] == pytest.approx(rate)


def test_settings_defaults_are_the_released_ones():
    s = CaCoVIDSettings()
    assert (s.group, s.diversity_rollouts, s.frame_rollouts, s.rounds) == (32, 1, 8, 5)
    released = (0.125, 3.0, 0.2, 0.28, 1e-6, 5.0)
    assert (s.frame_fraction, s.frame_prob_cap, s.clip_low, s.clip_high, s.lr, s.grad_clip) == released


# --- the optimisation ---------------------------------------------------------------------------------------

def one_token_task(D, n, seed):
    """Videos where one random token carries the answer (a fixed direction added to it): the reward is 1 when a
    combination keeps that token."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(D, generator=torch.Generator().manual_seed(123)), dim=0) * 6
    samples = []
    for _ in range(n):
        features = torch.randn(4, 16, D, generator=g)
        answer = int(torch.randint(64, (), generator=g))
        features.view(64, D)[answer] += direction
        query = Query(torch.arange(5), torch.randn(5, D, generator=g))
        samples.append(PolicySample(VideoTokens(features, (4, 4, 4)), query, data={"answer_token": answer}))
    return samples


def keeps_answer(batch, masks):
    return [m[:, s.data["answer_token"]].float() for s, m in zip(batch, masks)]


def top1_accuracy(policy, samples):
    with torch.no_grad():
        scores, _, _ = policy([s.tokens.features for s in samples], [s.tokens.grid for s in samples],
                              [s.query for s in samples])
    return sum(int(sc.flatten().argmax()) == s.data["answer_token"] for sc, s in zip(scores, samples)) / len(samples)


@pytest.mark.slow
def test_training_improves_reward_on_a_one_token_task(tiny_model):
    torch.manual_seed(0)
    policy = CaCoVIDPolicy.from_vlm(tiny_model("qwen2_5_vl")[0])
    train, held_out = one_token_task(policy.hidden_size, 48, seed=1), one_token_task(policy.hidden_size, 32, seed=2)
    before = top1_accuracy(policy.eval(), held_out)
    settings = CaCoVIDSettings(group=8, diversity_rollouts=1, frame_rollouts=2, rounds=2, rate_start=0.125,
                               rate_range=(0.125, 0.125), batch_size=4, lr=2e-3, epochs=2, seed=0)
    history = optimise_policy(policy, train, keeps_answer, settings, progress=False)
    after = top1_accuracy(policy.eval(), held_out)
    first, last = history[:4], history[-4:]
    assert sum(r["reward"] for r in last) / 4 > sum(r["reward"] for r in first) / 4 + 0.2
    assert before < 0.1 and after > 0.8, (before, after)


def test_training_is_reproducible(tiny_model):
    model = tiny_model("qwen2_vl")[0]
    settings = CaCoVIDSettings(group=4, diversity_rollouts=1, frame_rollouts=1, rounds=2, rate_start=0.1,
                               rate_range=(0.05, 0.25), batch_size=2, lr=1e-3)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        policy = CaCoVIDPolicy.from_vlm(model)
        history = optimise_policy(policy, one_token_task(policy.hidden_size, 8, seed=3), keeps_answer, settings,
                                  progress=False)
        runs.append((history, policy.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(v, runs[1][1][k]) for k, v in runs[0][1].items())


def test_settings_validate():
    with pytest.raises(ValueError, match="token-mode"):
        CaCoVIDSettings(group=9, diversity_rollouts=1, frame_rollouts=8)
    with pytest.raises(ValueError, match="rate_range"):
        CaCoVIDSettings(rate_range=(0.2, 0.1))
    with pytest.raises(ValueError, match="rate_start"):
        CaCoVIDSettings(rate_start=0.5)


def test_vlm_reward_matches_the_pressed_model():
    """The trainer's batched reward (all combinations of several samples in one forward) gives the answers the model
    gives under a press keeping the same tokens, one sample at a time."""
    from vidpress.presses import PlannedPress
    from vidpress.synthetic import make_split
    from vidpress.synthetic.reference import example_inputs, letter_token_ids, load_reference
    from vidpress.training.cacovid import VLMReward, encode_samples

    model, processor = load_reference()
    examples = make_split("train", 3)
    samples = encode_samples(model, processor, examples, progress=False)
    g = torch.Generator().manual_seed(0)
    masks = [torch.rand(4, 128, generator=g) < 0.2 for _ in samples]
    for m in masks:
        m[:, 0] = True
    letters = letter_token_ids(processor)
    rewards = VLMReward(model, letters)(samples, masks)
    for example, m, r in zip(examples, masks, rewards):
        for keep, value in zip(m, r):
            inputs = example_inputs(processor, [example])
            with torch.no_grad(), PlannedPress(retention=0.5, plans=[keep.nonzero().squeeze(1)])(model):
                answer = int(model(**inputs).logits[0, -1, letters].argmax())
            assert float(answer == example.answer) == float(value)


@pytest.mark.slow
def test_accelerate_two_processes_train(tmp_path):
    """Two data-parallel CPU processes (accelerate's torchrun launcher; on a machine without GPUs accelerate falls
    back to gloo on CPU. `--cpu` alone would start one process unless an MPI hostfile is given) run a tiny training
    and save one policy."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "vidpress",
               "train", "cacovid", "--out", str(tmp_path / "policy"), "--train-examples", "4", "--group", "4",
               "--frame-rollouts", "1", "--rounds", "2", "--batch-size", "1", "--val-examples", "0", "--threads", "1",
               "--quiet"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    policy = CaCoVIDPolicy.from_pretrained(tmp_path / "policy")
    assert policy.config["model_type"] == "qwen2_5_vl"
    import json

    metrics = json.loads((tmp_path / "policy" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 2


def test_bench_row_runs_the_shipped_reference_policy():
    from vidpress.evaluation.testbed import bench_names, build_row, run_bench
    from vidpress.synthetic import make_split
    from vidpress.synthetic.reference import load_reference

    model, processor = load_reference()
    press, row_model = build_row("cacovid", 0.1, model)
    assert "cacovid" in bench_names() and isinstance(press, CaCoVIDPress) and row_model is model
    with press(row_model):  # press(model) loads the policy on entry, as for every user
        assert press.policy.config["model_type"] == "qwen2_5_vl" and press.policy.hidden_size == 128
    rows = run_bench(model, processor, make_split("test", 4), ["cacovid"], [0.1], progress=False)
    # floor(R * N) tokens, as released
    assert rows[1]["press"] == "cacovid" and rows[1]["effective_retention"] == int(0.1 * 128) / 128


def test_clipped_surrogate_stays_finite_for_saturated_probabilities():
    old = torch.tensor([[-600.0]])
    new = torch.tensor([[-1.0]], requires_grad=True)
    objective = clipped_surrogate(new, old, torch.tensor([-1.0]), torch.ones(1, 1))
    objective.backward()
    assert torch.isfinite(objective) and torch.isfinite(new.grad).all()


def score_scale(policy, samples):
    with torch.no_grad():
        tokens, frames, _ = policy([s.tokens.features for s in samples], [s.tokens.grid for s in samples],
                                   [s.query for s in samples])
    token_l2 = torch.cat([t.flatten() for t in tokens]).pow(2).mean()
    return float(token_l2 + torch.cat([f.flatten() for f in frames]).pow(2).mean())


@pytest.mark.slow
def test_score_l2_keeps_the_logits_small_and_is_off_by_default(tiny_model):
    assert CaCoVIDSettings().score_l2 == 0.0
    with pytest.raises(ValueError, match="score_l2"):
        CaCoVIDSettings(score_l2=-1.0)
    model = tiny_model("qwen2_5_vl")[0]
    held_out = one_token_task(CaCoVIDPolicy.from_vlm(model).hidden_size, 16, seed=2)
    scales, accuracies = [], []
    for weight in (0.0, 0.05):
        torch.manual_seed(0)
        policy = CaCoVIDPolicy.from_vlm(model)
        settings = CaCoVIDSettings(group=8, diversity_rollouts=1, frame_rollouts=2, rounds=2, rate_start=0.125,
                                   rate_range=(0.125, 0.125), batch_size=4, lr=2e-3, epochs=2, seed=0, score_l2=weight)
        optimise_policy(policy, one_token_task(policy.hidden_size, 48, seed=1), keeps_answer, settings, progress=False)
        scales.append(score_scale(policy.eval(), held_out))
        accuracies.append(top1_accuracy(policy, held_out))
    assert scales[1] < 0.5 * scales[0], scales
    assert accuracies[1] > 0.5, accuracies  # the penalty shrinks the scores, not the ranking


def test_cli_score_l2_flag():
    import argparse

    from vidpress.cli.train import add_train_cacovid_parser

    sub = argparse.ArgumentParser().add_subparsers()
    parser = add_train_cacovid_parser(sub)
    assert parser.parse_args(["--out", "x"]).score_l2 == 0.0
    assert parser.parse_args(["--out", "x", "--score-l2", "1e-4"]).score_l2 == 1e-4
