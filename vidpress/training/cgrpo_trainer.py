"""`CGRPOTrainer`: TRL's GRPOTrainer for C-GRPO (MARC, arXiv 2510.07915; rewards and data in
`vidpress.training.cgrpo`). This module imports TRL (the [train] extra); `vidpress.training.cgrpo` imports it only
when training starts.

What `CGRPOTrainer` overrides in GRPOTrainer, and why: GRPOTrainer feeds VLMs images only (no video inputs reach
`generate` or the log-prob forward), so generation and log-probs are re-implemented to pass each prompt's video
(pre-computed encoder features, `VideoFeatures`) through the press; and the compression reward needs the accuracy
of a whole group, which may be split over processes, so it is added after TRL gathers the per-function rewards.
Everything else (sampling, advantages, loss, KL, optimisation, accelerate, peft) is TRL's.
"""

from __future__ import annotations

import torch

from vidpress.evaluation.marc_vmr import EpisodicMarcPress
from vidpress.models import apply_press, get_adapter
from vidpress.presses.base import Press
from vidpress.training.cgrpo import (
    VideoFeatures,
    accuracy_reward,
    check_family,
    compression_reward,
    unwrap_model,
)

try:
    from trl import GRPOTrainer
    from trl.models import unwrap_model_for_generation
    from trl.trainer.utils import pad
except ModuleNotFoundError as error:  # the CLI names the extra from `name`
    raise ModuleNotFoundError('C-GRPO training needs trl from the [train] extra: pip install "vidpress[train]"',
                              name="trl") from error


class CGRPOTrainer(GRPOTrainer):
    """TRL GRPOTrainer for C-GRPO: rollouts and log-probs from the pressed video, compression reward.

    Args: model (Qwen2-VL / Qwen2.5-VL), press (the student's press, e.g. MarcPress()), videos (VideoFeatures),
    alpha, tau, plus GRPOTrainer's own: args (GRPOConfig), train_dataset with columns prompt / video / answer /
    teacher_accuracy [/ choices], processing_class (the tokenizer), reward_funcs (default [accuracy_reward];
    the first must be the accuracy), peft_config, ...
    """

    def __init__(self, model, press: Press, videos: VideoFeatures, *, alpha: float = 1.0, tau: float = 0.6,
                 reward_funcs=None, **kwargs):
        if not isinstance(model, str):
            check_family(unwrap_model(model))
        if not isinstance(press, Press):
            raise ValueError(f"press must be a vidpress Press; got {type(press).__name__}")
        dataset = kwargs.get("train_dataset")
        if dataset is not None:
            missing = {"prompt", "video", "answer", "teacher_accuracy"} - set(dataset.column_names)
            if missing:
                raise ValueError(f"train_dataset lacks the columns {sorted(missing)} (C-GRPO needs prompt, video, "
                                 "answer and the cached teacher_accuracy)")
        if isinstance(press, EpisodicMarcPress) and videos.clips is None:
            raise ValueError("EpisodicMarcPress retrieves before the encoder: the VideoFeatures need the clips "
                             "retrieved from each video's frames (VideoFeatures.clips, from press.retrieve)")
        self.press, self.videos, self.alpha, self.tau = press, videos, float(alpha), float(tau)
        self._video_rows: list[int] = []
        super().__init__(model, reward_funcs=reward_funcs or [accuracy_reward], **kwargs)
        # a sampled placeholder token would claim video features that do not exist
        placeholders = get_adapter(unwrap_model(self.model)).placeholder_token_ids
        suppressed = set(self.generation_config.suppress_tokens or []) | set(placeholders)
        self.generation_config.suppress_tokens = sorted(suppressed)
        # one more reward column, filled in after gathering (see _calculate_rewards)
        self.reward_weights = torch.cat([self.reward_weights, torch.ones(1)])

    # -- rewards: the compression term needs whole groups -------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # gathered [B, F]
        from accelerate.utils import gather

        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        teacher = gather(torch.tensor([float(x["teacher_accuracy"]) for x in inputs], device=rewards.device))
        compression = compression_reward(rewards[:, 0], teacher, group, self.alpha, self.tau)
        self._metrics[mode]["rewards/compression/mean"].append(compression.mean().item())
        student = rewards[:, 0].view(-1, group).mean(1)
        teacher_groups = teacher.view(-1, group)[:, 0]
        eta = torch.where(teacher_groups > 0, student / teacher_groups.clamp_min(1e-12), torch.zeros_like(student))
        self._metrics[mode]["eta"].append(eta.mean().item())
        return torch.cat([rewards, compression[:, None]], dim=1)

    # -- which video each row has ---------------------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        self._video_rows = [int(x["video"]) for x in inputs]
        output = super()._generate_and_score_completions(inputs)
        # a batch-first tensor: TRL shuffles and splits it with the other per-rollout tensors
        output["video"] = torch.tensor(self._video_rows, device=output["prompt_ids"].device)
        return output

    def _compute_loss(self, model, inputs):
        self._video_rows = inputs["video"].tolist()
        return super()._compute_loss(model, inputs)

    def _begin(self, rows) -> None:
        """Hand a press that retrieves before the encoder the clips of the videos it is about to press, in order."""
        if isinstance(self.press, EpisodicMarcPress):
            self.press.begin_clips([self.videos.clips[int(r)] for r in rows])

    # -- generation with the pressed video --------------------------------------------------------
    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if self.use_vllm or self.use_transformers_continuous_batching:
            raise ValueError("C-GRPO generates with transformers' generate "
                             "(vLLM cannot take pre-computed video features)")
        device = self.accelerator.device
        prompts = [torch.tensor(ids) for ids in prompt_ids]
        input_ids = pad(prompts, padding_value=self._tokenizer.pad_token_id, padding_side="left").to(device)
        attention_mask = pad([torch.ones_like(t) for t in prompts], padding_value=0, padding_side="left").to(device)
        # TRL's context turns gradient checkpointing off (it would disable the KV cache) and gathers sharded weights
        with torch.no_grad(), unwrap_model_for_generation(
            self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation,
            generation_kwargs=self.generation_kwargs,
            gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
        ) as unwrapped:
            hf = unwrap_model(unwrapped)
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
            inputs.update(self.videos.model_inputs(self._video_rows, input_ids, hf))
            with apply_press(self.press, hf) as pressed:
                self._begin(self._video_rows)
                pressed_inputs = pressed.prepare(inputs, for_generate=True)
            # the inputs are pressed: generate runs on them unhooked
            sequences = unwrapped.generate(**pressed_inputs, generation_config=self.generation_config)
        completion_ids = sequences[:, pressed_inputs["input_ids"].shape[1] :]
        # everything after the first EOS is dropped, as GRPOTrainer does
        is_eos = torch.isin(completion_ids, torch.tensor(self.eos_token_ids, device=completion_ids.device))
        length = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1,
                             torch.full_like(is_eos[:, 0], completion_ids.shape[1], dtype=torch.long))
        return [c[:n].tolist() for c, n in zip(completion_ids.cpu(), length.cpu())], None

    # -- log-probs of the completions with the pressed video ---------------------------------------
    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **_multimodal):
        batch_size = batch_size or input_ids.size(0)
        hf = unwrap_model(model)
        rows = self._video_rows
        if len(rows) != input_ids.size(0):
            raise RuntimeError(f"C-GRPO: {input_ids.size(0)} sequences but {len(rows)} video rows")
        all_logps, all_entropies = [], []
        with apply_press(self.press, hf) as pressed:
            for start in range(0, input_ids.size(0), batch_size):
                end = min(start + batch_size, input_ids.size(0))
                ids, mask = input_ids[start:end], attention_mask[start:end]
                labels = ids.masked_fill(mask == 0, -100)
                labels[:, :-logits_to_keep] = -100
                inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels, "fused_lm_head": True}
                inputs.update(self.videos.model_inputs(rows[start:end], ids, hf))
                self._begin(rows[start:end])
                # the press slices labels with the sequence, so completion tokens stay labelled after pruning
                inputs = pressed.prepare(inputs)
                kept_labels = inputs["labels"]
                with pressed.passthrough(), self.accelerator.autocast():
                    outputs = model(**inputs)
                # the fused head scores next tokens: value t belongs to label t + 1
                next_labels = kept_labels[:, 1:]
                all_logps.append(completion_values(outputs.log_probs, next_labels, logits_to_keep))
                if compute_entropy:
                    all_entropies.append(completion_values(outputs.entropy, next_labels, logits_to_keep))
        entropies = torch.cat(all_entropies) if compute_entropy else None
        return torch.cat(all_logps), entropies, None


def completion_values(values: torch.Tensor, labels: torch.Tensor, width: int) -> torch.Tensor:
    """Per-token values [B, L'] at the labelled (completion) positions, left-aligned into [B, width] (0 elsewhere)."""
    labelled = labels != -100
    out = values.new_zeros(values.shape[0], width)
    counts = labelled.sum(1)
    slots = torch.cumsum(labelled.long(), dim=1) - 1
    row = torch.arange(values.shape[0], device=values.device)[:, None].expand_as(labelled)
    out = out.index_put((row[labelled], slots[labelled]), values[labelled])
    if int(counts.max()) > width:
        raise RuntimeError("more labelled positions than completion tokens")
    return out
