"""C-GRPO (MARC, arXiv 2510.07915): train the student VLM to answer from compressed video with GRPO.

The student sees the video through a press (MarcPress: about one frame's tokens); the teacher is the same model
on the full video. For each prompt the student samples G text rollouts; a rollout's reward is

    R_i = r_i + 1[o_i correct] * alpha * max(0, eta - tau),    eta = a_student / a_teacher,

r_i = accuracy (+ optional format) reward, a_student = the group's accuracy, a_teacher = the teacher's accuracy on
the same prompt (cached in the dataset column "teacher_accuracy", computed once with the initial weights by
`teacher_accuracy`). Advantages are group-normalised; the loss is GRPO's clipped surrogate with a KL penalty (beta)
to the reference model, all from TRL's `GRPOTrainer`.

The trainer itself, `CGRPOTrainer` (TRL's GRPOTrainer with pressed video), is in `vidpress.training.cgrpo_trainer`,
which imports TRL; this module does not.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vidpress.models import apply_press, get_adapter
from vidpress.presses.base import Press
from vidpress.training.model_card import write_model_card

logger = logging.getLogger("vidpress")

__all__ = [
    "VideoFeatures",
    "check_family",
    "accuracy_reward",
    "compression_reward",
    "format_reward",
    "teacher_accuracy",
    "train_cgrpo",
    "unwrap_model",
]



# ------------------------------------------------------------------------------------------- rewards


def _answer_text(completion) -> str:
    if isinstance(completion, list):  # conversational completions: [{"role": "assistant", "content": ...}]
        completion = completion[-1]["content"]
    return completion.strip().rstrip(".").strip()


def accuracy_reward(completions, answer, **_) -> list[float]:
    """1.0 when the completion (stripped, a trailing "." removed) equals the row's `answer`, else 0.0."""
    return [float(_answer_text(c) == str(a).strip()) for c, a in zip(completions, answer, strict=True)]


def format_reward(completions, choices, **_) -> list[float]:
    """1.0 when the completion is exactly one of the row's `choices` (e.g. "A,B,C,D"), else 0.0."""
    return [float(_answer_text(c) in str(ch).split(",")) for c, ch in zip(completions, choices, strict=True)]


def compression_reward(correct: torch.Tensor, teacher: torch.Tensor, group_size: int, alpha: float,
                       tau: float = 0.6) -> torch.Tensor:
    """C-GRPO's compression reward of every rollout: 1[correct] * alpha * max(0, eta - tau).

    correct [B] in {0, 1} and teacher [B] (the teacher's accuracy on each rollout's prompt), B = groups x group_size
    with a group's rollouts consecutive. eta = the group's mean correctness / teacher accuracy; a prompt the teacher
    never answers (accuracy 0) has no retention ratio and gets no compression reward. Returns [B].
    """
    if correct.numel() % group_size:
        raise ValueError(f"{correct.numel()} rollouts do not split into groups of {group_size}")
    student = correct.float().view(-1, group_size).mean(dim=1, keepdim=True).expand(-1, group_size).reshape(-1)
    teacher = teacher.float().to(student.device)
    eta = torch.where(teacher > 0, student / teacher.clamp_min(1e-12), torch.zeros_like(student))
    return correct.float() * alpha * (eta - tau).clamp_min(0.0)


# ------------------------------------------------------------------------------------------- videos


@dataclass
class VideoFeatures:
    """Pre-computed video encoder outputs of a Qwen2-VL / Qwen2.5-VL model, one row block per video.

    features: list of [N_v, D] tensors (the vision tower's output, e.g. float16 to save memory);
    grids: LongTensor [V, 3] of (t, h, w) patch grids (video_grid_thw rows);
    seconds_per_grid: optional [V] seconds per temporal grid step (Qwen2.5-VL's second_per_grid_ts).
    clips: optional, per video, (frame count, clips [(start, end)]) retrieved from its frames before encoding, for a
        press that retrieves before the encoder (`EpisodicMarcPress.retrieve`).
    Encoding once is what lets training skip the (frozen) vision tower: the press and the LLM see exactly what
    `get_video_features` gives.
    """

    features: list
    grids: torch.Tensor
    seconds_per_grid: torch.Tensor | None = None
    clips: list | None = None

    def __post_init__(self):
        if len(self.features) != self.grids.shape[0]:
            raise ValueError(f"{len(self.features)} feature blocks but {self.grids.shape[0]} grids")
        if self.clips is not None and len(self.clips) != len(self.features):
            raise ValueError(f"{len(self.features)} feature blocks but retrieved clips of {len(self.clips)} videos")

    def __len__(self) -> int:
        return len(self.features)

    def model_inputs(self, rows, input_ids: torch.Tensor, model) -> dict:
        """Model kwargs of these videos for `model` (the transformers model) and a batch input_ids [B, L] whose row i
        holds video rows[i]: what its adapter builds (`Adapter.precomputed_video_inputs`), features in float32."""
        rows = [int(r) for r in rows]
        seconds = None if self.seconds_per_grid is None else self.seconds_per_grid[rows]
        return get_adapter(model).precomputed_video_inputs([self.features[r].float() for r in rows], self.grids[rows],
                                                           seconds, input_ids)


def check_family(model) -> None:
    """C-GRPO runs the model from pre-computed video features: a ValueError unless its family supports that."""
    get_adapter(model).check_precomputed_videos("C-GRPO training")


def unwrap_model(model):
    """The transformers model under accelerate / DDP / peft wrappers (the press adapter needs it)."""
    while hasattr(model, "module"):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


# ------------------------------------------------------------------------------------------- teacher


@torch.no_grad()
def teacher_accuracy(model, tokenizer, videos: VideoFeatures, rows: list[dict], num_samples: int = 8,
                     max_new_tokens: int = 2, temperature: float = 1.0, batch_size: int = 32,
                     press: Press | None = None, progress: bool = True) -> list[float]:
    """Accuracy of `num_samples` sampled rollouts per row (dict with "prompt", "video", "answer"), with the full
    video (press None: the C-GRPO teacher) or through `press`. Computed once, before training, to cache in the
    dataset column "teacher_accuracy"."""
    from tqdm.auto import tqdm

    model.eval()
    placeholders = get_adapter(model).placeholder_token_ids
    result = []
    for start in tqdm(range(0, len(rows), batch_size), desc="teacher accuracy (full video)", disable=not progress):
        chunk = rows[start : start + batch_size]
        enc = tokenizer([r["prompt"] for r in chunk], return_tensors="pt", padding=True, padding_side="left")
        inputs = {"input_ids": enc["input_ids"].to(model.device),
                  "attention_mask": enc["attention_mask"].to(model.device)}
        inputs.update(videos.model_inputs([r["video"] for r in chunk], inputs["input_ids"], model))
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                      num_return_sequences=num_samples, pad_token_id=tokenizer.pad_token_id,
                      suppress_tokens=placeholders)
        if press is None:
            out = model.generate(**inputs, **kwargs)
        else:
            with apply_press(press, model):
                out = model.generate(**inputs, **kwargs)
        texts = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        answers = [r["answer"] for r in chunk for _ in range(num_samples)]
        correct = torch.tensor(accuracy_reward(texts, answers)).view(len(chunk), num_samples)
        result += correct.mean(dim=1).tolist()
    return result


# ------------------------------------------------------------------------------------------- trainer


# ------------------------------------------------------------------------------------------- the synthetic testbed


def synthetic_data(model, processor, split: str, num_examples: int, progress: bool = True, family: str | None = None,
                   retrieve=None):
    """C-GRPO rows and VideoFeatures for the first `num_examples` of a synthetic split (family None: the six short
    families; "long": the long family), encoded once with `model`'s (frozen) vision tower. Rows: prompt (chat
    template, video placeholders expanded), video, answer (letter), choices ("A,B,C,D"), family. retrieve (with a
    family): examples -> per video (frame count, clips), stored as `VideoFeatures.clips`."""
    import numpy as np

    if family is not None:
        return _long_data(model, processor, split, num_examples, progress, family, retrieve)
    if retrieve is not None:
        raise ValueError("retrieval before the encoder needs the frames: pass a family (--family long)")

    from vidpress.inputs import placeholder_text
    from vidpress.synthetic.reference import FPS
    from vidpress.synthetic.world import LETTERS, WorldConfig
    from vidpress.training.reference import cache_split, video_grid

    config = WorldConfig()
    data = cache_split(model, split, np.arange(num_examples), config, progress,
                  f"encoding {split} videos (vision tower, once)")
    n = data.features.shape[1]
    tokenizer = processor.tokenizer
    texts: dict[str, str] = {}
    rows = []
    for i, (question, answer, family) in enumerate(zip(data.questions, data.answers, data.families)):
        if question not in texts:
            texts[question] = placeholder_text(processor, question, n)
        rows.append({"prompt": texts[question], "video": i, "answer": LETTERS[answer], "choices": ",".join(LETTERS),
                     "family": family})
    videos = VideoFeatures(
        features=list(data.features),
        grids=video_grid(len(rows), config),
        seconds_per_grid=torch.full((len(rows),), config.temporal_patch / FPS),
    )
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer needs a pad token")
    return rows, videos


def _long_data(model, processor, split: str, num_examples: int, progress: bool, family: str, retrieve=None):
    """`synthetic_data` of a family drawn by its own module (clips of different lengths: one grid per video)."""
    from vidpress.inputs import placeholder_text
    from vidpress.synthetic import make_split
    from vidpress.synthetic.reference import FPS
    from vidpress.synthetic.world import LETTERS
    from vidpress.training.long_reference import CachedVideos, cache_videos

    data = CachedVideos()
    examples = make_split(split, num_examples, families=(family,))
    cache_videos(model, examples, data, progress, f"encoding {split} videos (vision tower, once)")
    rows = [{"prompt": placeholder_text(processor, q, len(f)), "video": i, "answer": LETTERS[a],
             "choices": ",".join(LETTERS), "family": fam}
            for i, (q, f, a, fam) in enumerate(zip(data.questions, data.features, data.answers, data.families))]
    tp = model.config.vision_config.temporal_patch_size
    videos = VideoFeatures(features=data.features, grids=torch.tensor(data.grids),
                           seconds_per_grid=torch.full((len(rows),), tp / FPS),
                           clips=None if retrieve is None else retrieve(examples))
    return rows, videos


def evaluate_students(models: dict, processor, press: Press, test_examples: int, progress: bool = True,
                      family: str | None = None) -> dict:
    """Bench rows (accuracy overall and per family, effective retention) on the first `test_examples` synthetic test
    examples (family None: the six short families; else that family): the first model with all tokens, then every
    model with `press`. models: name -> model; all share the first one's vision tower (videos are encoded once)."""
    from vidpress.evaluation.testbed import evaluate_settings
    from vidpress.synthetic import QUESTION_FAMILIES, make_split

    first = next(iter(models.values()))
    settings = {"full": None, **{name: (press, model) for name, model in models.items()}}
    examples = make_split("test", test_examples, families=(family,) if family else QUESTION_FAMILIES)
    rows = evaluate_settings(first, processor, examples, settings, batch_size=16 if family else 32, progress=progress)
    keys = ("accuracy", "accuracy_by_family", "effective_retention", "visual_tokens")
    return {name: {k: v for k, v in row.items() if k in keys} for name, row in rows.items()}


def train_cgrpo(
    out_dir,
    *,
    model_path=None,
    train_examples: int = 1200,
    steps: int = 200,
    prompts_per_step: int = 8,
    num_generations: int = 32,
    learning_rate: float = 3e-4,
    beta: float = 0.04,
    epsilon: float = 0.2,
    alpha: float = 1.0,
    tau: float = 0.6,
    temperature: float = 1.5,
    format_weight: float = 0.0,
    budget_tokens: int | None = None,
    top_k: int | None = 3,
    teacher_samples: int = 8,
    lora: bool = False,
    lora_rank: int = 16,
    test_examples: int = 720,
    family: str | None = None,
    retriever=None,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Train a reference-model student with C-GRPO on the synthetic train split and save it to `out_dir`.
    family: None trains and tests on the six short families; "long" on the long family.
    retriever: a CLIP-style dual encoder folder (with a family): MARC as released, the `top_k` clips are retrieved
    from the frames before the encoder (`EpisodicMarcPress`, once per training video) and merged to the budget;
    None: MarcPress retrieves with the model's own embeddings after the encoder.

    The student answers through MarcPress(budget_tokens, top_k) (default: one frame's tokens); the vision tower is
    frozen and encodes every training video once. The teacher's accuracy (full video, `teacher_samples` rollouts)
    is cached with the initial weights. Each optimiser step takes `prompts_per_step`
    prompts x `num_generations` rollouts over all processes. With `lora`, LoRA adapters on the LLM are trained and
    merged into the saved weights. Writes the model + processor, metrics.json and MODEL_CARD.md (main process).
    """
    from accelerate import PartialState
    from datasets import Dataset
    from trl import GRPOConfig

    from vidpress.evaluation.marc_vmr import EpisodicMarcPress
    from vidpress.presses.marc import MarcPress
    from vidpress.synthetic.reference import load_reference
    from vidpress.training.cgrpo_trainer import CGRPOTrainer

    if threads is not None:
        torch.set_num_threads(threads)
    state = PartialState()
    out_dir = Path(out_dir)
    total = prompts_per_step * num_generations
    if total % state.num_processes:
        raise ValueError(f"prompts_per_step x num_generations = {total} rollouts must split evenly over "
                         f"{state.num_processes} processes")
    start = time.time()
    torch.manual_seed(seed)
    model, processor = load_reference(model_path)
    check_family(model)
    for p in model.model.visual.parameters():
        p.requires_grad_(False)
    retrieve = None
    if retriever is None:
        press = MarcPress(budget_tokens=budget_tokens, top_k=top_k)
    else:
        if family is None or not top_k:
            raise ValueError("--retriever retrieves clips from the frames of a family's examples: it needs --family "
                             "and --top-k >= 1")
        press = EpisodicMarcPress(embedder=Path(retriever), top_k=top_k, budget_tokens=budget_tokens)
        retrieve = press.retrieve
    rows, videos = synthetic_data(model, processor, "train", train_examples, progress and state.is_main_process,
                                  family, retrieve)
    if retriever is not None and budget_tokens is None:
        # one frame's tokens by default, as MarcPress's: all videos of a family share the frame size
        merge = model.config.vision_config.spatial_merge_size
        press.budget_tokens = int(videos.grids[0, 1] * videos.grids[0, 2]) // merge**2
    t_teacher = time.time()
    torch.manual_seed(seed)  # every process samples the same teacher rollouts
    teacher = teacher_accuracy(model, processor.tokenizer, videos, rows, num_samples=teacher_samples,
                               temperature=temperature, progress=progress and state.is_main_process)
    for row, acc in zip(rows, teacher):
        row["teacher_accuracy"] = acc
    teacher_seconds = time.time() - t_teacher
    reward_funcs, weights = [accuracy_reward], [1.0]
    if format_weight:
        reward_funcs.append(format_reward)
        weights.append(format_weight)
    args = GRPOConfig(
        output_dir=str(out_dir / "trainer"),  # nothing is saved there (save_strategy "no"); removed afterwards
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        per_device_train_batch_size=total // state.num_processes,
        num_generations=num_generations,
        max_completion_length=2,  # the letter and <|im_end|>
        temperature=temperature,
        top_k=0,
        learning_rate=learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=max(1, steps // 20),
        beta=beta,
        epsilon=epsilon,
        loss_type="grpo",
        scale_rewards="group",
        reward_weights=weights,
        max_steps=steps,
        logging_steps=max(1, steps // 20),
        save_strategy="no",
        report_to=[],
        seed=seed,
        disable_tqdm=not progress,
        remove_unused_columns=False,
        activation_checkpointing=False,  # a 1.2M-parameter model: recomputation only costs time
    )
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0,
            target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        )
    trainer = CGRPOTrainer(
        model, press, videos, alpha=alpha, tau=tau, reward_funcs=reward_funcs, args=args,
        train_dataset=Dataset.from_list(rows), processing_class=processor.tokenizer, peft_config=peft_config,
    )
    t_train = time.time()
    trainer.train()
    train_seconds = time.time() - t_train
    metrics = {
        "budget_tokens": press.budget_tokens, "top_k": top_k, "train_examples": train_examples, "steps": steps,
        "prompts_per_step": prompts_per_step, "num_generations": num_generations, "learning_rate": learning_rate,
        "beta": beta, "epsilon": epsilon, "alpha": alpha, "tau": tau, "temperature": temperature,
        "format_weight": format_weight, "lora": lora, "family": family, "model": str(model_path or "reference_model"),
        "retriever": None if retriever is None else str(retriever),
        "seed": seed, "processes": state.num_processes,
        "threads": torch.get_num_threads(), "teacher_train_accuracy": sum(teacher) / len(teacher),
        "teacher_seconds": round(teacher_seconds, 1), "train_seconds": round(train_seconds, 1),
        "log": [entry for entry in trainer.state.log_history if "reward" in entry],
    }
    if not trainer.accelerator.is_main_process:
        return metrics
    student = trainer.accelerator.unwrap_model(trainer.model)
    if lora:
        student = student.merge_and_unload()
    for p in student.parameters():
        p.requires_grad_(True)
    student.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / "trainer").is_dir() and not any((out_dir / "trainer").iterdir()):
        (out_dir / "trainer").rmdir()
    student.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    if test_examples:
        initial, _ = load_reference(model_path)
        metrics["test"] = evaluate_students({"marc": initial, "marc + C-GRPO": student}, processor, press,
                                            test_examples, progress, family)
    metrics["total_seconds"] = round(time.time() - start, 1)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _write_model_card(out_dir, metrics, command)
    return metrics


def _write_model_card(out_dir, metrics: dict, command: str | None = None) -> Path:
    """MODEL_CARD.md of a C-GRPO student from its metrics."""
    budget = metrics["budget_tokens"] or "one frame's"
    long = metrics.get("family") is not None
    base = metrics.get("model", "reference_model")
    intro = [
        f"The synthetic reference model `{base}` trained with C-GRPO"
        + (f" on the {metrics['family']} family" if long else ""),
        "(`vidpress.training.cgrpo`) to answer from MarcPress-compressed video: retrieval of the top"
        + (f" {metrics['top_k']} clips from the frames before the encoder by the dual encoder "
           f"`{metrics['retriever']}` (`EpisodicMarcPress`, MARC as released)" if metrics.get("retriever") else
           f" {metrics['top_k']} clips by the question's own text embeddings")
        + f", then the parameter-free temporal merge down to {budget} tokens",
        ("(4 of 128-512 video tokens: one 56x56 frame's 2 x 2 tokens, 0.8-3.1%, with the default budget)." if long
         else "(16 of 128 video tokens = 12.5% with the default budget).")
        + " Vision tower frozen (shared with the reference",
        "model, so `vidpress bench` encodes each video once); the language side is trained.",
    ]
    training = [
        "## Training",
        f"- GRPO on the student's rollouts (letter + `<|im_end|>`), {metrics['num_generations']} per prompt, "
        f"{metrics['prompts_per_step']} prompts per step, {metrics['steps']} steps, lr {metrics['learning_rate']:g}, "
        f"temperature {metrics['temperature']:g}.",
        f"- Reward: accuracy (+ format x{metrics['format_weight']:g}) + 1[correct] * {metrics['alpha']:g} * "
        f"max(0, eta - {metrics['tau']:g}),",
        "  eta = student group accuracy / teacher accuracy (teacher = the same model on all video tokens, cached",
        f"  before training; mean teacher accuracy on the train prompts {metrics['teacher_train_accuracy']:.3f}).",
        f"- Clipped surrogate (epsilon {metrics['epsilon']:g}) + KL to the initial model (beta {metrics['beta']:g}), "
        f"TRL GRPOTrainer ({'LoRA, merged' if metrics['lora'] else 'full LLM weights'}).",
        f"- First {metrics['train_examples']:,} examples of the `train` split; seed {metrics['seed']}, "
        f"{metrics['processes']} process(es) x {metrics['threads']} thread(s); teacher cache "
        f"{metrics['teacher_seconds']:.0f} s, training {metrics['train_seconds']:.0f} s.",
    ]
    results = []
    test = metrics.get("test")
    if test:
        families = list(test["full"]["accuracy_by_family"])
        table = [
            "## Accuracy on the synthetic test split",
            "",
            "| setting | kept tokens | effective retention | overall | " + " | ".join(families) + " |",
            "|---|---|---|---|" + "---|" * len(families),
        ]
        press = ("MARC (retrieval before the encoder + MarcPress's merge)" if metrics.get("retriever")
                 else "MarcPress")
        labels = {"full": "all tokens (the initial model)", "marc": f"{press} on the initial model",
                  "marc + C-GRPO": f"{press} on this student"}
        for name, r in test.items():
            table.append(
                f"| {labels.get(name, name)} | {r['visual_tokens']:.1f} | {r['effective_retention']:.3f} | "
                f"**{r['accuracy']:.3f}** | "
                + " | ".join(f"{r['accuracy_by_family'][f]:.3f}" for f in families) + " |"
            )
        results.append(table)
    title = (f"C-GRPO student of `{base}` on the {metrics['family']} family" if long
             else "marc-reference: the reference model's C-GRPO student")
    return write_model_card(out_dir, title, intro, [training],
                            command or "vidpress train cgrpo --out DIR", results)
