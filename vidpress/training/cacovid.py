"""CaCoVID's combinatorial policy optimisation (`vidpress train cacovid`; arXiv 2602.01649), by the sampler and loss
of the authors' released training code, as described below.

The VLM stays frozen. Every training video is encoded once. Per sample and round, G token combinations (keep
masks, all with k = round(r * M) tokens per frame on average) are drawn from the policy snapshot taken before the
sample's first update: 1 content rollout (density-peak diversity alone), token-mode rollouts (rollout 0 = the
deterministic per-frame top-k in EVERY round, the others by grouped sampling in the combination space) and
frame-mode rollouts (ceil(0.125 T) frames from the frame head, rollout 0 = the top frames, the budget filled inside
them jointly by density peaks). The frozen VLM answers with each combination in one batched forward; the reward is
whether the argmax option letter is right. Token-mode and frame-mode rewards accumulate over the rounds in separate
memories and are z-scored separately (unbiased std + 1e-4); a PPO-style clipped surrogate on the token keep/drop
log-probabilities of token-mode rollouts (kept and dropped tokens weighted to contribute equally) plus one on the
log-probabilities of the frames each frame-mode rollout sampled (unweighted mean) updates the policy after each
round. Each sample's rate starts at 0.02 and is halved / doubled when its accumulated token-mode accuracy is
>= 0.875 / <= 0.125, within [0.01, 0.12]. Data parallel through accelerate; deterministic given the seed, the
process count and the threads.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from vidpress.presses.base import keep_top
from vidpress.presses.cacovid import CaCoVIDPolicy
from vidpress.presses.planned import PlannedPress
from vidpress.training.model_card import write_model_card
from vidpress.types import Query, VideoTokens

__all__ = [
    "CONTENT",
    "FRAME",
    "TOKEN",
    "CaCoVIDSettings",
    "PolicySample",
    "VLMReward",
    "balanced_weights",
    "clipped_surrogate",
    "density_peak_scores",
    "encode_samples",
    "frame_mode_sample",
    "frame_surrogate",
    "group_bounds",
    "group_cap",
    "grouped_token_sample",
    "mode_advantages",
    "next_rate",
    "optimise_policy",
    "rollout_combinations",
    "train_cacovid",
    "water_fill",
    "zscore",
]

#: rollout modes (the `modes` returned by rollout_combinations)
CONTENT, TOKEN, FRAME = 0, 1, 2


@dataclass
class CaCoVIDSettings:
    """Knobs of the optimisation. Defaults: the setup of the authors' release (arXiv 2602.01649), listed below.

    group: combinations per rollout round (G = 32): diversity_rollouts content rollouts (1), frame_rollouts
        frame-mode rollouts (8) and the rest token mode (23). Token-mode rollout 0 is the deterministic per-frame
        top-k and frame-mode rollout 0 the top frames, in every round.
    rounds: rollout rounds per sample against the first policy snapshot (5); rollouts accumulate over the rounds.
    rate_start: every sample's initial sampling rate r (0.02), the share of each frame's tokens kept
        (k = max(1, round(r * M))).
    rate_range: bounds of the adaptive rate ([0.01, 0.12]).
    easy / hard: the rate is halved when the sample's accumulated token-mode accuracy is >= easy (0.875) and
        doubled when it is <= hard (0.125).
    group_factor: the `group_size` of n_g = max(floor(1 / (r * group_factor)), 1) groups per frame ranking (2).
    frame_fraction: frame mode samples ceil(frame_fraction * T) frames (0.125), more if the budget needs them.
    frame_prob_cap: frame mode's sampling probabilities are capped at frame_prob_cap / T by water-filling (3).
    clip_low / clip_high: PPO ratio clip (1 - low, 1 + high) = (0.2, 0.28). frame_loss_weight: weight of the frame
        surrogate (1).
    score_l2: weight of an L2 penalty on the policy's logits (mean squared token score + mean squared frame score
        per sample, added to the loss); not in the paper. 0 (default): off.
    lr: AdamW learning rate (1e-6, the paper's scale); grad_clip: gradient-norm clip (5).
    batch_size: samples per step and process; epochs: passes over the samples; seed: sampling and order.
    """

    group: int = 32
    diversity_rollouts: int = 1
    frame_rollouts: int = 8
    rounds: int = 5
    rate_start: float = 0.02
    rate_range: tuple[float, float] = (0.01, 0.12)
    easy: float = 0.875
    hard: float = 0.125
    group_factor: float = 2.0
    frame_fraction: float = 0.125
    frame_prob_cap: float = 3.0
    clip_low: float = 0.2
    clip_high: float = 0.28
    frame_loss_weight: float = 1.0
    score_l2: float = 0.0
    lr: float = 1e-6
    grad_clip: float = 5.0
    batch_size: int = 4
    epochs: int = 1
    seed: int = 0

    def __post_init__(self):
        if (self.group < 1 + self.diversity_rollouts + self.frame_rollouts
                or min(self.diversity_rollouts, self.frame_rollouts) < 0):
            raise ValueError(
                f"group ({self.group}) must exceed diversity_rollouts + frame_rollouts "
                f"({self.diversity_rollouts} + {self.frame_rollouts}, each >= 0) by at least one token-mode rollout"
            )
        lo, hi = self.rate_range
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"rate_range must be (lo, hi) with 0 < lo <= hi <= 1; got {self.rate_range!r}")
        if not lo <= self.rate_start <= hi:
            raise ValueError(f"rate_start must lie in rate_range {self.rate_range!r}; got {self.rate_start!r}")
        if not 0 <= self.hard < self.easy <= 1:
            raise ValueError(f"need 0 <= hard < easy <= 1; got hard={self.hard!r}, easy={self.easy!r}")
        if not 0 < self.frame_fraction <= 1 or not self.frame_prob_cap >= 1:
            raise ValueError("need 0 < frame_fraction <= 1 and frame_prob_cap >= 1; "
                             f"got {self.frame_fraction!r}, {self.frame_prob_cap!r}")
        if self.rounds < 1 or self.batch_size < 1 or self.epochs < 1:
            raise ValueError("rounds, batch_size and epochs must be >= 1")
        if not self.score_l2 >= 0:
            raise ValueError(f"score_l2 must be >= 0; got {self.score_l2!r}")
        if not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0; got {self.grad_clip!r}")


# ------------------------------------------------------------------------------------------- combinations


def density_peak_scores(features: torch.Tensor, neighbours: int = 5) -> torch.Tensor:
    """Density-peak diversity of every token, [T, M, D] -> [T, M]: local density (exp of minus the mean squared
    cosine distance to the nearest neighbours) times the distance to the nearest denser token; tokens that are
    both typical of a cluster and far from other clusters' centres score highest."""
    T, M, D = features.shape
    x = F.normalize(features.reshape(T * M, D).float(), dim=-1)
    dist = (2 - 2 * x @ x.T).clamp_min(0).sqrt()
    k = min(neighbours, T * M - 1)
    if k < 1:
        return torch.ones(T, M, device=features.device)
    density = torch.exp(-dist.topk(k + 1, largest=False).values[:, 1:].pow(2).mean(-1))
    index = torch.arange(T * M, device=features.device)
    # j is denser than i (ties: the lower index counts as denser, so exactly one token has no denser one)
    denser = (density[None, :] > density[:, None]) | (
        (density[None, :] == density[:, None]) & (index[None, :] < index[:, None]))
    delta = dist.masked_fill(~denser, math.inf).min(-1).values
    delta = torch.where(torch.isinf(delta), dist.max(-1).values, delta)
    return (density * delta).view(T, M)


def group_bounds(size: int, n_groups: int) -> list[int]:
    """Boundaries [0, ..., size] of `n_groups` contiguous groups of a ranking of `size`, sizes differing by <= 1
    (the larger ones first)."""
    base, extra = divmod(size, n_groups)
    bounds = [0]
    for g in range(n_groups):
        bounds.append(bounds[-1] + base + (1 if g < extra else 0))
    return bounds


def water_fill(probs: torch.Tensor, cap: float) -> torch.Tensor:
    """Probabilities [n] (sum 1) with every entry <= cap: entries above the cap are set to it and their excess is
    shared by the others in proportion to their mass, repeatedly until none exceeds it (by weight when the
    uncapped entries hold no mass). Needs n * cap >= 1; otherwise the uniform distribution (the closest)."""
    p = probs.double() / probs.double().sum()
    n = p.numel()
    if n * cap <= 1 + 1e-12:
        return torch.full_like(p, 1.0 / n)
    capped = torch.zeros(n, dtype=torch.bool, device=p.device)
    while True:
        over = (p > cap + 1e-12) & ~capped
        if not over.any():
            return p
        capped |= over
        p = torch.where(capped, torch.full_like(p, cap), p)
        free = ~capped
        excess = 1.0 - float(p.sum())
        mass = float(p[free].sum())
        share = p[free] / mass if mass > 0 else torch.full_like(p[free], 1.0 / int(free.sum()))
        p[free] = p[free] + excess * share


def group_cap(n_groups: int) -> float:
    """The released cap on one group's probability: max(min(2 / n_g, 0.9), 0.1)."""
    return max(min(2.0 / n_groups, 0.9), 0.1)


def grouped_token_sample(scores: torch.Tensor, rate: float, generator: torch.Generator,
                         group_factor: float = 2.0) -> torch.Tensor:
    """Token-mode combination, keep mask [T, M] with exactly k = max(1, round(rate * M)) tokens per frame.

    Per frame: softmax the token scores, sort the tokens by probability, cut the ranking into
    n_g = max(floor(1 / (rate * group_factor)), 1) contiguous groups (at most M // k, so each holds >= k tokens),
    draw one group from the group masses water-filled to the cap max(min(2 / n_g, 0.9), 0.1), then draw k tokens
    inside it without replacement from their renormalised probabilities clamped to [1 / (2e), 2 / e], e = M // n_g.
    """
    T, M = scores.shape
    k = max(1, min(M, round(rate * M)))
    n_groups = min(max(math.floor(1 / (rate * group_factor) + 1e-9), 1), M // k)
    e = M // n_groups
    probs = torch.softmax(scores.double().cpu(), dim=1)
    sorted_p, order = torch.sort(probs, dim=1, descending=True, stable=True)
    bounds = group_bounds(M, n_groups)
    keep = torch.zeros(T, M, dtype=torch.bool)
    cap = group_cap(n_groups)
    for t in range(T):
        group_p = torch.stack([sorted_p[t, a:b].sum() for a, b in zip(bounds[:-1], bounds[1:])])
        chosen = int(torch.multinomial(water_fill(group_p, cap), 1, generator=generator))
        a, b = bounds[chosen], bounds[chosen + 1]
        inside = (sorted_p[t, a:b] / sorted_p[t, a:b].sum()).clamp(1 / (2 * e), 2 / e)
        picks = torch.multinomial(inside, k, replacement=False, generator=generator)
        keep[t, order[t, a + picks]] = True
    return keep.to(scores.device)


def frame_mode_sample(frame_scores: torch.Tensor, features: torch.Tensor, total: int, generator: torch.Generator | None,
                      fraction: float = 0.125, prob_cap: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame-mode combination: (keep mask [T, M] with `total` tokens, sampled frames [T] bool).

    Picks n_f = ceil(fraction * T) frames (more if `total` needs them): without replacement by a multinomial on the
    frame softmax water-filled to <= prob_cap / T, or, with generator None, the n_f top-scoring frames. The budget
    is filled inside the picked frames jointly (not per frame) by density-peak scores over their tokens
    `features` [T, M, D]."""
    T, M, _ = features.shape
    n_frames = min(T, max(math.ceil(fraction * T - 1e-9), math.ceil(total / M), 1))
    if generator is None:
        frames = torch.sort(frame_scores.float().cpu(), descending=True, stable=True).indices[:n_frames]
    else:
        probs = torch.softmax(frame_scores.double().cpu(), dim=0).clamp_min(1e-12)
        frames = torch.multinomial(water_fill(probs, min(1.0, prob_cap / T)), n_frames, replacement=False,
                                   generator=generator)
    frames = frames.sort().values
    picked = torch.zeros(T, dtype=torch.bool)
    picked[frames] = True
    inside = keep_top(density_peak_scores(features[frames.to(features.device)]), total).cpu()  # into n_f * M
    keep = torch.zeros(T, M, dtype=torch.bool)
    keep[frames[inside // M], inside % M] = True
    return keep.to(features.device), picked.to(features.device)


def rollout_combinations(token_scores: torch.Tensor, frame_scores: torch.Tensor, features: torch.Tensor,
                         diversity: torch.Tensor, rate: float, settings: CaCoVIDSettings, generator: torch.Generator):
    """One round's G combinations of one sample, all with the budget k * T (k = max(1, round(rate * M))).

    Returns keep masks [G, T, M], modes [G] (CONTENT, TOKEN or FRAME) and the frames each rollout sampled [G, T]
    (all True outside frame mode). Order: content rollouts (top density-peak `diversity` [T, M] over the video),
    token mode (rollout 0 the per-frame top-k, then grouped sampling), frame mode (rollout 0 the top frames, then
    sampled frames)."""
    T, M = token_scores.shape
    device = token_scores.device
    k = max(1, min(M, round(rate * M)))
    total = k * T
    masks, modes, frames = [], [], []
    for _ in range(settings.diversity_rollouts):
        keep = torch.zeros(T * M, dtype=torch.bool, device=device)
        keep[keep_top(diversity, total)] = True
        masks.append(keep.view(T, M))
        modes.append(CONTENT)
    token_rollouts = settings.group - settings.diversity_rollouts - settings.frame_rollouts
    for j in range(token_rollouts):
        if j == 0:
            top = torch.sort(token_scores, dim=1, descending=True, stable=True).indices[:, :k]
            masks.append(torch.zeros(T, M, dtype=torch.bool, device=device).scatter_(1, top, True))
        else:
            masks.append(grouped_token_sample(token_scores, rate, generator, settings.group_factor))
        modes.append(TOKEN)
    frames = [torch.ones(T, dtype=torch.bool, device=device)] * len(masks)
    for j in range(settings.frame_rollouts):
        keep, picked = frame_mode_sample(frame_scores, features, total, None if j == 0 else generator,
                                         settings.frame_fraction, settings.frame_prob_cap)
        masks.append(keep)
        frames.append(picked)
        modes.append(FRAME)
    return torch.stack(masks), torch.tensor(modes, device=device), torch.stack(frames)


# ------------------------------------------------------------------------------------------- loss


def zscore(rewards: torch.Tensor) -> torch.Tensor:
    """(r - mean) / (unbiased std + 1e-4), the released normalisation; zeros for fewer than two rewards."""
    if rewards.numel() < 2:
        return torch.zeros_like(rewards)
    return (rewards - rewards.mean()) / (rewards.std(unbiased=True) + 1e-4)


def mode_advantages(rewards: torch.Tensor, modes: torch.Tensor) -> torch.Tensor:
    """Advantages [n] of accumulated rollouts: token-mode and frame-mode rewards z-scored each within its own mode
    (its own memory); content rollouts get 0 (they enter no loss)."""
    advantages = torch.zeros_like(rewards)
    for mode in (TOKEN, FRAME):
        chosen = modes == mode
        advantages[chosen] = zscore(rewards[chosen])
    return advantages


def next_rate(rate: float, token_accuracy: float, settings: CaCoVIDSettings) -> float:
    """The released rate schedule: halve when the accumulated token-mode accuracy is >= easy, double when it is
    <= hard, within rate_range."""
    lo, hi = settings.rate_range
    if token_accuracy >= settings.easy:
        return max(lo, rate / 2)
    if token_accuracy <= settings.hard:
        return min(hi, rate * 2)
    return rate


def balanced_weights(keep: torch.Tensor) -> torch.Tensor:
    """Per-entry loss weights [G, N] for keep masks [G, N]: kept entries share 1/2 and dropped entries share 1/2
    of each combination's weight (all of it when one side is empty), so a few kept tokens count as much as the
    many dropped ones."""
    keep = keep.float()
    kept = keep.sum(1, keepdim=True)
    dropped = keep.shape[1] - kept
    both = (kept > 0) & (dropped > 0)
    w_kept = torch.where(both, 0.5 / kept.clamp_min(1), 1.0 / kept.clamp_min(1))
    w_dropped = torch.where(both, 0.5 / dropped.clamp_min(1), 1.0 / dropped.clamp_min(1))
    return keep * w_kept + (1 - keep) * w_dropped


def keep_log_probs(scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """log pi(action) of keep/drop actions [G, N] under scores [N] (keep logit minus drop logit)."""
    return torch.where(keep, F.logsigmoid(scores)[None], F.logsigmoid(-scores)[None])


def clipped_surrogate(new_log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                      weights: torch.Tensor, clip_low: float = 0.2, clip_high: float = 0.28) -> torch.Tensor:
    """PPO's clipped objective (to maximise), per-entry ratios [G, N], advantages [G], weights [G, N]; mean over G."""
    # Saturated keep/drop probabilities can give log-ratios in the hundreds: exp would overflow to inf, and with a
    # negative advantage the pessimistic min keeps inf (a NaN gradient). Beyond +-20 the clip decides anyway.
    ratio = torch.exp((new_log_probs - old_log_probs).clamp(-20.0, 20.0))
    a = advantages[:, None]
    objective = torch.minimum(ratio * a, ratio.clamp(1 - clip_low, 1 + clip_high) * a)
    return (objective * weights).sum(1).mean()


def frame_surrogate(new_scores: torch.Tensor, old_scores: torch.Tensor, picked: torch.Tensor, advantages: torch.Tensor,
                    clip_low: float = 0.2, clip_high: float = 0.28) -> torch.Tensor:
    """Clipped objective of frame-mode rollouts: frame scores [T] (new, old), sampled frames [F, T] bool,
    advantages [F]; each sampled frame's log-probability under the frame softmax, unweighted mean over all
    (rollout, sampled frame) entries."""
    new_lp = torch.log_softmax(new_scores, dim=0)[None].expand_as(picked)[picked]
    old_lp = torch.log_softmax(old_scores, dim=0)[None].expand_as(picked)[picked]
    a = advantages[:, None].expand_as(picked)[picked]
    ratio = torch.exp((new_lp - old_lp).clamp(-20.0, 20.0))
    return torch.minimum(ratio * a, ratio.clamp(1 - clip_low, 1 + clip_high) * a).mean()


# ------------------------------------------------------------------------------------------- rollouts + updates


@dataclass
class PolicySample:
    """One training sample: the video's frame tokens, its prompt's Query and its diversity scores."""

    tokens: VideoTokens
    query: Query
    diversity: torch.Tensor | None = None
    data: dict = field(default_factory=dict)  # what the reward needs (e.g. cached VLM inputs and the answer)

    def __post_init__(self):
        if self.diversity is None:
            self.diversity = density_peak_scores(self.tokens.features)


@dataclass
class _Memory:
    """A sample's accumulated rollouts over the rounds of one step."""

    masks: list = field(default_factory=list)  # [G, T*M] bool per round
    modes: list = field(default_factory=list)  # [G] per round
    frames: list = field(default_factory=list)  # [G, T] bool per round
    rewards: list = field(default_factory=list)  # [G] per round


def optimise_policy(policy, samples: list[PolicySample], reward: Callable, settings: CaCoVIDSettings, accelerator=None,
                    progress: bool = True, log: Callable | None = None) -> list[dict]:
    """Run the optimisation over `samples` (this process's share) and return per-step records.

    reward(batch_samples, masks) -> list of [G] float rewards, masks being one bool [G, T * M] per sample.
    `policy` may be wrapped by accelerate (DDP); the optimiser is created and prepared here.
    Records: reward (all rollouts), topk_accuracy (token-mode rollout 0, round 0), frame_reward (frame mode),
    rate (mean over the batch after the step), loss.
    """
    from tqdm.auto import tqdm

    if accelerator is None:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=not torch.cuda.is_available())
    optimizer = torch.optim.AdamW(policy.parameters(), lr=settings.lr, weight_decay=0.0)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    generator = torch.Generator().manual_seed(settings.seed * 1000 + accelerator.process_index)
    rates = [settings.rate_start] * len(samples)
    order_rng = torch.Generator().manual_seed(settings.seed)  # the same order on every process
    batches = []
    for _ in range(settings.epochs):
        perm = torch.randperm(len(samples), generator=order_rng).tolist()
        batches += [perm[i : i + settings.batch_size]
                    for i in range(0, len(perm) - settings.batch_size + 1, settings.batch_size)]
    topk = settings.diversity_rollouts  # index of token-mode rollout 0 in a round
    history = []
    ema = {}
    bar = tqdm(batches, desc="cacovid policy", disable=not (progress and accelerator.is_main_process), mininterval=2.0)
    for step, rows in enumerate(bar):
        batch = [samples[r] for r in rows]
        inputs = ([s.tokens.features for s in batch], [s.tokens.grid for s in batch], [s.query for s in batch])
        policy.eval()
        with torch.no_grad():  # the snapshot every round of this batch samples from and is compared against
            old_tokens, old_frames, _ = policy(*inputs)
        if not all(torch.isfinite(t).all() and torch.isfinite(f).all() for t, f in zip(old_tokens, old_frames)):
            raise RuntimeError(f"the policy's scores became non-finite at step {step + 1} (training diverged); "
                               f"train again with a lower --lr (now {settings.lr:g})")
        memories = [_Memory() for _ in batch]
        first_accuracy = []
        for round_ in range(settings.rounds):
            drawn = [rollout_combinations(old_tokens[i], old_frames[i], s.tokens.features, s.diversity, rates[rows[i]],
                                          settings, generator) for i, s in enumerate(batch)]
            masks = [m.flatten(1) for m, _, _ in drawn]
            rewards = reward(batch, masks)
            for i, (memory, (m, modes, frames), r) in enumerate(zip(memories, drawn, rewards)):
                memory.masks.append(m.flatten(1))
                memory.modes.append(modes.cpu())
                memory.frames.append(frames)
                memory.rewards.append(torch.as_tensor(r, dtype=torch.float32).cpu())
                if round_ == 0:  # the deterministic top-k rollout: what the greedy policy gets at this rate
                    first_accuracy.append(float(r[topk]))
                all_modes, all_rewards = torch.cat(memory.modes), torch.cat(memory.rewards)
                rates[rows[i]] = next_rate(rates[rows[i]], float(all_rewards[all_modes == TOKEN].mean()), settings)
            policy.train()
            new_tokens, new_frames, new_modes = policy(*inputs)
            loss = 0.0
            for i, memory in enumerate(memories):
                keep = torch.cat(memory.masks)  # [G * rounds so far, T * M]
                modes = torch.cat(memory.modes).to(keep.device)
                advantages = mode_advantages(torch.cat(memory.rewards),
                                             torch.cat(memory.modes)).to(new_tokens[i].device)
                token = modes == TOKEN
                token_objective = clipped_surrogate(
                    keep_log_probs(new_tokens[i].flatten(), keep[token]),
                    keep_log_probs(old_tokens[i].flatten(), keep[token]),
                    advantages[token], balanced_weights(keep[token]), settings.clip_low, settings.clip_high)
                frame = modes == FRAME
                frame_objective = frame_surrogate(new_frames[i], old_frames[i], torch.cat(memory.frames)[frame],
                                                  advantages[frame], settings.clip_low, settings.clip_high
                                                  ) if frame.any() else new_frames[i].sum() * 0.0
                loss = loss - (token_objective + settings.frame_loss_weight * frame_objective) / len(batch)
                if settings.score_l2:
                    loss = loss + settings.score_l2 * (new_tokens[i].pow(2).mean()
                                                       + new_frames[i].pow(2).mean()) / len(batch)
                # The mode head is not trained; a zero term keeps its parameters in the graph for DDP.
                loss = loss + 0.0 * new_modes[i].sum()
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(policy.parameters(), settings.grad_clip)
            optimizer.step()
        all_rewards = torch.cat([torch.cat(m.rewards) for m in memories])
        all_modes = torch.cat([torch.cat(m.modes) for m in memories])
        stats = torch.tensor([
            float(all_rewards.mean()),
            sum(first_accuracy) / len(first_accuracy),
            float(all_rewards[all_modes == FRAME].mean()) if bool((all_modes == FRAME).any()) else 0.0,
            sum(rates[r] for r in rows) / len(rows),
            float(loss.detach()),
        ])
        stats = accelerator.reduce(stats, reduction="mean") if accelerator.num_processes > 1 else stats
        record = {"step": step + 1, "reward": stats[0].item(), "topk_accuracy": stats[1].item(),
                  "frame_reward": stats[2].item(), "rate": stats[3].item(), "loss": stats[4].item()}
        history.append(record)
        for key in ("reward", "topk_accuracy"):
            ema[key] = record[key] if key not in ema else 0.95 * ema[key] + 0.05 * record[key]
        bar.set_postfix(reward=f"{ema['reward']:.3f}", acc=f"{ema['topk_accuracy']:.3f}", rate=f"{record['rate']:.3f}")
        if log is not None:
            log(record)
    return history


# ------------------------------------------------------------------------------------------- the frozen VLM


class VLMReward:
    """Reward of keep masks = correctness of the frozen VLM's answer (argmax over the option-letter logits at the
    last prompt position). All combinations of a batch of samples go through the model in one forward."""

    def __init__(self, model, letter_ids: list[int], chunk: int = 256):
        from vidpress.models import get_adapter
        from vidpress.models.sequence import pad_token_id

        self.model, self.adapter, self.chunk = model, get_adapter(model), chunk
        self.letters = torch.tensor(letter_ids)
        self.pad_id = pad_token_id(model)

    @torch.no_grad()
    def __call__(self, batch: list[PolicySample], masks: list[torch.Tensor]) -> list[torch.Tensor]:
        rows = [(i, keep) for i, m in enumerate(masks) for keep in m]
        scores = []
        for start in range(0, len(rows), self.chunk):
            scores.append(self._answers(batch, rows[start : start + self.chunk]))
        predictions = torch.cat(scores)
        answers = torch.tensor([batch[i].data["answer"] for i, _ in rows])
        correct = (predictions == answers).float()
        return list(correct.split([m.shape[0] for m in masks]))

    def _answers(self, batch, rows) -> torch.Tensor:
        samples = [batch[i].data for i, _ in rows]
        length = max(s["inputs"]["input_ids"].shape[1] for s in samples)
        inputs = {}
        for name in samples[0]["inputs"]:
            values = [s["inputs"][name] for s in samples]
            if name in samples[0]["sequence_keys"]:  # left padding
                pad = self.pad_id if name == "input_ids" else 0
                values = [F.pad(v, (length - v.shape[1], 0), value=pad) for v in values]
            inputs[name] = torch.cat(values).to(self.model.device)
        entries = [e for s in samples for e in s["videos"]]
        inputs["mm_encoder_outputs"] = {"video": self.adapter.pack_video_output(samples[0]["like"], entries)}
        plans = [keep.nonzero().squeeze(1) for _, keep in rows]
        pressed, _ = self.adapter.press_inputs(PlannedPress(retention=0.5, plans=plans), inputs, for_generate=False)
        logits = self.model(**pressed, logits_to_keep=1).logits[:, -1]
        return logits[:, self.letters.to(logits.device)].argmax(-1).cpu()


@torch.no_grad()
def encode_samples(model, processor, examples, batch_size: int = 32, progress: bool = True,
                   desc: str = "encoding videos") -> list[PolicySample]:
    """Encode each example's video once (processor + the model's vision encoder) and keep what training needs:
    the frame tokens, the question's Query (as the adapter builds it for presses), diversity scores, and per sample
    its unpadded text inputs and encoder-output entries for the reward. Examples need .video, .question, .answer."""
    from tqdm.auto import tqdm

    from vidpress.models import get_adapter
    from vidpress.models.sequence import PIXEL_INPUTS
    from vidpress.synthetic.reference import example_inputs

    adapter = get_adapter(model)
    samples = []
    for start in tqdm(range(0, len(examples), batch_size), desc=desc, disable=not progress, mininterval=2.0):
        chunk = examples[start : start + batch_size]
        inputs = dict(example_inputs(processor, chunk).to(model.device))
        output = adapter.encode("video", inputs)
        layouts = adapter.video_layouts(output, inputs)
        entries = adapter.split_video_output(output)
        if len(layouts) != len(chunk):
            raise ValueError(f"expected one video per example; got {len(layouts)} videos for {len(chunk)} examples")
        B, L = inputs["input_ids"].shape
        real = inputs["attention_mask"].bool()
        # the policy sees the whole prompt with the VLM's own position ids (as the press gets them from the adapter)
        position_ids = adapter.full_position_ids(inputs, inputs["attention_mask"], for_generate=False)
        slots = (inputs["input_ids"] == adapter.video_token_id) & real
        sequence_keys = {k for k, v in inputs.items()
                         if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape == (B, L)}
        for i, example in enumerate(chunk):
            own = {}
            for name, value in inputs.items():
                if name in PIXEL_INPUTS or not isinstance(value, torch.Tensor):
                    continue
                own[name] = value[i : i + 1][:, real[i]] if name in sequence_keys else value[i : i + 1]
            tokens = layouts[i].tokens
            tokens = VideoTokens(tokens.features.detach().float().cpu(), tokens.grid)
            samples.append(PolicySample(
                tokens=tokens,
                query=adapter.query(inputs["input_ids"][i], real[i], position_ids[..., i, :],
                                    slots[i].nonzero().squeeze(1)[: tokens.num_tokens]),
                data={"inputs": own, "sequence_keys": sequence_keys, "videos": [entries[i]], "like": output,
                      "answer": int(example.answer)},
            ))
    return samples


# ------------------------------------------------------------------------------------------- end to end


def train_cacovid(out_dir, *, model_path=None, train_examples: int = 2000, settings: CaCoVIDSettings | None = None,
                  val_examples: int = 240, val_retentions=(0.25, 0.1, 0.05), threads: int | None = None,
                  init_from=None, progress: bool = True, command: str | None = None) -> dict:
    """Train a CaCoVID policy for a model (default: the shipped reference model) on the synthetic train split,
    save it to `out_dir` (save_pretrained) with metrics.json and MODEL_CARD.md, and return the metrics.

    Runs on one process, or data-parallel under `accelerate launch` (each process takes every n-th example).
    init_from: a saved policy to continue training from (default: a fresh one from the VLM's first layer).
    """
    from accelerate import Accelerator

    from vidpress.synthetic.reference import letter_token_ids, load_reference
    from vidpress.synthetic.world import make_split

    settings = settings or CaCoVIDSettings()
    if threads is not None:
        torch.set_num_threads(threads)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(settings.seed)
    start = time.time()
    model, processor = load_reference(model_path)
    model.to(accelerator.device).requires_grad_(False)
    examples = make_split("train", train_examples)
    per_process = len(examples) // accelerator.num_processes
    mine = examples[accelerator.process_index :: accelerator.num_processes][:per_process]
    samples = encode_samples(model, processor, mine, progress=progress and accelerator.is_main_process)
    encode_seconds = time.time() - start
    if init_from is not None:
        policy = CaCoVIDPolicy.from_pretrained(init_from, device=accelerator.device)
        policy.check_width(model.config.get_text_config().hidden_size)
    else:
        policy = CaCoVIDPolicy.from_vlm(model).to(accelerator.device)
    history = optimise_policy(policy, samples, VLMReward(model, letter_token_ids(processor)), settings, accelerator,
                              progress)
    train_seconds = time.time() - start
    metrics = {
        "settings": asdict(settings),
        "model": str(model_path or "vidpress/synthetic/reference_model"),
        "train_examples": train_examples,
        "init_from": None if init_from is None else str(init_from),
        "processes": accelerator.num_processes,
        "threads": torch.get_num_threads(),
        "steps": len(history),
        "encode_seconds": round(encode_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "curve": _curve(history),
    }
    if accelerator.is_main_process:
        policy = accelerator.unwrap_model(policy).eval()
        out_dir = Path(out_dir)
        policy.save_pretrained(out_dir)
        if val_examples:
            metrics["val"] = _validate(model, processor, policy, make_split("val", val_examples), val_retentions,
                                       progress)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        _write_model_card(out_dir, metrics, command)
    accelerator.wait_for_everyone()
    return metrics


def _curve(history: list[dict], points: int = 10) -> list[dict]:
    """Mean reward / top-k accuracy / rate over `points` equal slices of the steps."""
    if not history:
        return []
    size = max(1, len(history) // points)
    curve = []
    for a in range(0, len(history), size):
        part = history[a : a + size]
        curve.append({"steps": f"{part[0]['step']}-{part[-1]['step']}",
                      **{k: round(sum(r.get(k, 0.0) for r in part) / len(part), 4)
                         for k in ("reward", "topk_accuracy", "frame_reward", "rate")}})
    return curve


def _validate(model, processor, policy, examples, retentions, progress) -> dict:
    from vidpress.evaluation.testbed import evaluate_settings
    from vidpress.presses.cacovid import CaCoVIDPress

    settings = {f"{r:g}": CaCoVIDPress(policy=policy, retention=r) for r in retentions}
    result = {}
    for name, row in evaluate_settings(model, processor, examples, settings, progress=progress).items():
        result[name] = {"accuracy": round(row["accuracy"], 4), "evidence_recall": round(row["evidence_recall"], 4),
                        "effective_retention": round(row["effective_retention"], 4)}
        if progress:
            print(f"val cacovid@{name}: accuracy {row['accuracy']:.3f}, evidence recall {row['evidence_recall']:.3f}")
    return result


def _write_model_card(out_dir, metrics: dict, command: str | None = None) -> Path:
    """MODEL_CARD.md next to the saved policy, from the training metrics."""
    s = metrics["settings"]
    intro = [
        "A `vidpress.presses.cacovid.CaCoVIDPolicy` trained by combinatorial policy optimisation against a frozen VLM",
        f"(`{metrics['model']}`). Load it with `CaCoVIDPolicy.from_pretrained(path)` and use it as",
        "`CaCoVIDPress(policy=policy, retention=R)` on that model only.",
    ]
    training = [
        "## Training",
        f"- {metrics['train_examples']} synthetic `train` examples, {metrics['steps']} steps of {s['batch_size']} "
        f"samples x {s['rounds']} rollout rounds x G={s['group']} combinations ({s['diversity_rollouts']} diversity, "
        f"{s['group'] - s['diversity_rollouts'] - s['frame_rollouts']} token mode, {s['frame_rollouts']} frame "
        "mode),",
        f"  sampling rate from {s['rate_start']:g} in [{s['rate_range'][0]:g}, {s['rate_range'][1]:g}] (halved / "
        f"doubled at accumulated token-mode accuracy >= {s['easy']:g} / <= {s['hard']:g}), clip "
        f"{s['clip_low']:g}/{s['clip_high']:g}, "
        f"AdamW lr {s['lr']:g}, grad clip {s['grad_clip']:g}, seed {s['seed']}.",
        *([f"- Continued from the policy in `{metrics['init_from']}`."] if metrics.get("init_from") else []),
        f"- {metrics['processes']} process(es), {metrics['threads']} CPU thread(s); encoding "
        f"{metrics['encode_seconds']:.0f} s, total {metrics['train_seconds'] / 60:.1f} min.",
    ]
    curve = [
        "## Reward curve (mean over slices of the steps)",
        "",
        "reward = share of all rollouts answered right; top-k acc = the deterministic top-k rollout's accuracy "
        "(round 0);",
        "frame = share of frame-mode rollouts answered right.",
        "",
        "| steps | reward | top-k acc | frame | rate |",
        "|---|---|---|---|---|",
        *[f"| {c['steps']} | {c['reward']:.3f} | {c['topk_accuracy']:.3f} | {c.get('frame_reward', 0.0):.3f} | "
          f"{c['rate']:.3f} |" for c in metrics["curve"]],
    ]
    results = [curve]
    if metrics.get("val"):
        results.append([
            "## Validation (`val` split, CaCoVIDPress)", "", "| retention | effective | accuracy | evidence recall |",
            "|---|---|---|---|",
            *[f"| {r} | {v['effective_retention']:.3f} | {v['accuracy']:.3f} | {v['evidence_recall']:.3f} |"
              for r, v in metrics["val"].items()],
        ])
    return write_model_card(out_dir, "CaCoVID policy", intro, [training], command or "vidpress train cacovid --out DIR",
                            results)
