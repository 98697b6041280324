"""`vidpress train reference | long-reference | cacovid | cgrpo | clip-retriever`: the trainers' options, handed to
the trainers."""

from __future__ import annotations

import argparse
import sys

from vidpress.cli.common import check_at_least


def add_train_parsers(subparsers) -> None:
    """Register every trainer on the `vidpress train` subparsers object."""
    add_train_reference_parser(subparsers)
    add_train_long_reference_parser(subparsers)
    add_train_cacovid_parser(subparsers)
    add_train_cgrpo_parser(subparsers)
    add_train_clip_retriever_parser(subparsers)


def _command(trainer: str) -> str | None:
    """The command line that ran the trainer, for its model card (None when not run from the command line)."""
    return f"vidpress train {trainer} " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else None


def add_train_reference_parser(subparsers) -> argparse.ArgumentParser:
    """Register `reference` (vidpress train reference --out DIR ...) on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "reference",
        help="train the tiny reference Video LLM of the synthetic world",
        description="Train the tiny Qwen2.5-VL reference model on the synthetic video-QA world (staged recipe: "
        "vision tower on per-token labels, then the language side on the questions), save it with its processor, "
        "evaluate it on the test split with all tokens and under VidCom2 / Random / Uniform, and write "
        "metrics.json and MODEL_CARD.md.",
    )
    parser.add_argument("--out", required=True, help="output folder (save_pretrained layout)")
    parser.add_argument("--train-examples", type=int, default=12000, help="training examples (default 12000)")
    parser.add_argument("--stage1-steps", type=int, default=400, help="vision-tower steps (default 400)")
    parser.add_argument("--stage2-steps", type=int, default=4000, help="language-model steps (default 4000)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--test-examples", type=int, default=720, help="held-out test examples to evaluate (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice; 1 is much faster on "
        "a machine other jobs share: multi-threaded steps stall whenever one core is busy)"
    )
    parser.add_argument(
        "--vision-from", default=None, help="copy the vision tower from this reference checkpoint first (with "
        "--stage1-steps 0: train the language side only)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=_run_train_reference)
    return parser


def _run_train_reference(args) -> int:
    from vidpress.training.reference import train_reference

    check_at_least(args, 1, "train_examples", "batch_size", "threads")
    check_at_least(args, 0, "stage1_steps", "stage2_steps", "test_examples")
    command = _command("reference")
    metrics = train_reference(
        args.out,
        train_examples=args.train_examples,
        stage1_steps=args.stage1_steps,
        stage2_steps=args.stage2_steps,
        batch_size=args.batch_size,
        test_examples=args.test_examples,
        seed=args.seed,
        threads=args.threads,
        vision_from=args.vision_from,
        progress=not args.quiet,
        command=command,
    )
    test = metrics.get("test", {}).get("all")
    summary = f"; test accuracy {test['accuracy']:.3f}" if test else ""
    print(f"saved to {args.out} after {metrics['train_seconds'] / 60:.1f} min{summary}")
    return 0


def add_train_long_reference_parser(subparsers) -> argparse.ArgumentParser:
    """Register `long-reference` (vidpress train long-reference --out DIR ...) on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "long-reference",
        help="continue training the reference model on the long family (plus a replay of the six short ones)",
        description="Continue training the reference model's language side (vision frozen) on the synthetic long "
        "family mixed with a replay of the six short families; save it with save_pretrained, metrics.json and "
        "MODEL_CARD.md (all-token test accuracy before and after).",
    )
    parser.add_argument("--out", required=True, help="output folder (save_pretrained layout)")
    parser.add_argument("--model", default=None, help="reference checkpoint to start from (default: the shipped one)")
    parser.add_argument("--long-examples", type=int, default=1200, help="long-family train examples (default 1200)")
    parser.add_argument("--replay-examples", type=int, default=1200,
                        help="six-family train examples replayed (default 1200)")
    parser.add_argument("--steps", type=int, default=600, help="optimiser steps (default 600)")
    parser.add_argument("--batch-size", type=int, default=16, help="videos per step (default 16)")
    parser.add_argument("--long-share", type=float, default=0.5, help="share of long videos per step (default 0.5)")
    parser.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate (default %(default)s)")
    parser.add_argument("--test-long", type=int, default=240, help="long-family test examples scored (default 240)")
    parser.add_argument("--test-short", type=int, default=720, help="six-family test examples scored (default 720)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=_run_train_long_reference)
    return parser


def _run_train_long_reference(args) -> int:
    from vidpress.training.long_reference import train_long_reference

    check_at_least(args, 1, "long_examples", "replay_examples", "steps", "batch_size", "threads")
    check_at_least(args, 0, "test_long", "test_short")
    if max(1, round(args.long_share * args.batch_size)) > args.long_examples or args.batch_size > args.replay_examples:
        raise ValueError("--long-examples / --replay-examples must hold at least one batch's rows")
    metrics = train_long_reference(
        args.out, base=args.model, long_examples=args.long_examples, replay_examples=args.replay_examples,
        steps=args.steps, batch_size=args.batch_size, long_share=args.long_share, lr=args.lr,
        test_long=args.test_long, test_short=args.test_short, seed=args.seed, threads=args.threads,
        progress=not args.quiet, command=_command("long-reference"),
    )
    after = metrics["after"]
    summary = "; ".join(f"{k} test accuracy {v['accuracy']:.3f}" for k, v in after.items())
    print(f"saved to {args.out} after {metrics['total_seconds'] / 60:.1f} min" + (f"; {summary}" if summary else ""))
    return 0


def add_train_cacovid_parser(subparsers) -> argparse.ArgumentParser:
    """Register `cacovid` (vidpress train cacovid --out DIR ...) on an argparse subparsers object."""
    from vidpress.training.cacovid import CaCoVIDSettings

    defaults = CaCoVIDSettings()
    parser = subparsers.add_parser(
        "cacovid",
        help="train a CaCoVID selection policy against a frozen VLM",
        description="Train a CaCoVID policy (one decoder layer copied from the VLM's first LLM layer, token and frame "
        "heads) by combinatorial policy optimisation against the frozen VLM on the synthetic train split; save it "
        "with save_pretrained, metrics.json and MODEL_CARD.md. Data-parallel with `accelerate launch -m vidpress "
        "train cacovid ...`.",
    )
    parser.add_argument("--out", required=True, help="output folder for the policy")
    parser.add_argument("--model", default=None,
                        help="reference-style model folder (default: the shipped reference model)")
    parser.add_argument("--train-examples", type=int, default=2000, help="synthetic train examples (default 2000)")
    parser.add_argument("--group", type=int, default=defaults.group,
                        help="combinations per rollout round, G (default %(default)s)")
    parser.add_argument("--diversity-rollouts", type=int, default=defaults.diversity_rollouts,
                        help="diversity-only combinations per round (default %(default)s)")
    parser.add_argument("--frame-rollouts", type=int, default=defaults.frame_rollouts,
                        help="frame-mode combinations per round; the rest of --group are token mode "
                        "(default %(default)s)")
    parser.add_argument("--rounds", type=int, default=defaults.rounds,
                        help="rollout rounds per sample (default %(default)s)")
    parser.add_argument("--rate-start", type=float, default=defaults.rate_start,
                        help="initial per-sample sampling rate (default %(default)s)")
    parser.add_argument("--rate-range", type=float, nargs=2, default=defaults.rate_range, metavar=("LO", "HI"),
                        help="bounds of the adaptive per-sample sampling rate (default %(default)s)")
    parser.add_argument("--score-l2", type=float, default=defaults.score_l2,
                        help="weight of an L2 penalty on the token and frame logits, against the scores' growth "
                        "(default %(default)s: off)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="samples per step and process (default %(default)s)")
    parser.add_argument("--lr", type=float, default=defaults.lr,
                        help="AdamW learning rate (default %(default)s, the paper's scale)")
    parser.add_argument("--grad-clip", type=float, default=defaults.grad_clip,
                        help="gradient-norm clip (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs,
                        help="passes over the train examples (default %(default)s)")
    parser.add_argument("--val-examples", type=int, default=240, help="val examples scored after training, with a "
                        "progress bar (default %(default)s; 0: none)")
    parser.add_argument("--init-from", default=None, help="continue training this saved policy (default: a fresh "
                        "policy from the model's first LLM layer)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the sampling and the initialisation (default %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=_run_train_cacovid)
    return parser


def _run_train_cacovid(args) -> int:
    from vidpress.training.cacovid import CaCoVIDSettings, train_cacovid

    check_at_least(args, 1, "train_examples", "group", "rounds", "batch_size", "epochs", "threads")
    check_at_least(args, 0, "diversity_rollouts", "frame_rollouts", "val_examples")
    settings = CaCoVIDSettings(
        group=args.group, diversity_rollouts=args.diversity_rollouts, frame_rollouts=args.frame_rollouts,
        rounds=args.rounds, rate_start=args.rate_start, rate_range=tuple(args.rate_range), batch_size=args.batch_size,
        lr=args.lr, grad_clip=args.grad_clip,
        score_l2=args.score_l2,
        epochs=args.epochs, seed=args.seed,
    )
    command = _command("cacovid")
    metrics = train_cacovid(args.out, model_path=args.model, train_examples=args.train_examples, settings=settings,
                            val_examples=args.val_examples, threads=args.threads, init_from=args.init_from,
                            progress=not args.quiet, command=command)
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(f"saved to {args.out} after {metrics['train_seconds'] / 60:.1f} min")
    return 0


def add_train_cgrpo_parser(subparsers) -> argparse.ArgumentParser:
    """Register `cgrpo` (vidpress train cgrpo --out DIR ...) on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "cgrpo",
        help="C-GRPO: train a student to answer from MarcPress-compressed video (synthetic testbed)",
        description="Train the reference model (or --model) with C-GRPO on the synthetic train split: GRPO on the "
        "student's rollouts with MarcPress-compressed video, reward = accuracy (+ format) + compression reward "
        "against the full-video teacher (cached), KL to the initial model; TRL GRPOTrainer. Runs under "
        "`accelerate launch` on several processes. Saves the student, metrics.json and MODEL_CARD.md.",
    )
    parser.add_argument("--out", required=True, help="output folder (save_pretrained layout)")
    parser.add_argument("--model", default=None, help="reference checkpoint to start from (default: the shipped one)")
    parser.add_argument("--train-examples", type=int, default=1200, help="training prompts (default 1200)")
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps (default 200)")
    parser.add_argument("--prompts-per-step", type=int, default=8,
                        help="prompts per step over all processes (default 8)")
    parser.add_argument("--num-generations", type=int, default=32, help="rollouts per prompt, G (default 32: with 8, "
                        "most groups of the one-letter answers were all right or all wrong and the testbed student did "
                        "not improve)")
    parser.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (default %(default)s)")
    parser.add_argument("--beta", type=float, default=0.04, help="KL coefficient to the initial model (default 0.04)")
    parser.add_argument("--epsilon", type=float, default=0.2, help="surrogate clipping range (default 0.2)")
    parser.add_argument("--alpha", type=float, default=1.0, help="compression reward scale (default 1.0)")
    parser.add_argument("--tau", type=float, default=0.6,
                        help="retention threshold of the compression reward (default 0.6)")
    parser.add_argument("--temperature", type=float, default=1.5, help="rollout sampling temperature (default 1.5: at "
                        "1.0 the testbed student's entropy collapsed within ~100 steps and most groups had no reward "
                        "spread)")
    parser.add_argument("--format-weight", type=float, default=0.0, help="weight of the format reward (default 0: off)")
    parser.add_argument("--budget-tokens", type=int, default=None,
                        help="MarcPress token budget (default: one frame's tokens)")
    parser.add_argument("--top-k", type=int, default=3, help="clips MarcPress retrieves (default 3; 0: no retrieval)")
    parser.add_argument("--teacher-samples", type=int, default=8, help="teacher rollouts per prompt (default 8)")
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters on the LLM (merged when saving)")
    parser.add_argument("--lora-rank", type=int, default=16, help="LoRA rank with --lora (default %(default)s)")
    parser.add_argument("--test-examples", type=int, default=720, help="test examples evaluated afterwards (0: none)")
    parser.add_argument("--family", choices=["long"], default=None, help="train and test on the long family instead "
                        "of the six short ones")
    parser.add_argument("--retriever", default=None, help="with --family: MARC as released, the top-k clips are "
                        "retrieved from the frames before the encoder by this CLIP-style dual encoder folder (e.g. "
                        "vidpress/synthetic/clip_retriever) and merged to the budget (default: MarcPress retrieves "
                        "with the model's own embeddings after the encoder)")
    parser.add_argument("--seed", type=int, default=0, help="seed of sampling and data order (default %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=_run_train_cgrpo)
    return parser


def _run_train_cgrpo(args) -> int:
    from vidpress.training.cgrpo import train_cgrpo

    check_at_least(args, 1, "train_examples", "steps", "prompts_per_step", "teacher_samples", "lora_rank",
                   "budget_tokens", "threads")
    check_at_least(args, 0, "top_k", "test_examples")
    if args.num_generations < 2:
        raise ValueError(f"--num-generations must be an integer >= 2 (advantages are normalised within a group); "
                         f"got {args.num_generations}")
    command = _command("cgrpo")
    metrics = train_cgrpo(
        args.out, model_path=args.model, train_examples=args.train_examples, steps=args.steps,
        prompts_per_step=args.prompts_per_step, num_generations=args.num_generations, learning_rate=args.lr,
        beta=args.beta, epsilon=args.epsilon, alpha=args.alpha, tau=args.tau, temperature=args.temperature,
        format_weight=args.format_weight, budget_tokens=args.budget_tokens, top_k=args.top_k or None,
        teacher_samples=args.teacher_samples, lora=args.lora, lora_rank=args.lora_rank,
        test_examples=args.test_examples, seed=args.seed, threads=args.threads, progress=not args.quiet,
        family=args.family, retriever=args.retriever, command=command,
    )
    test = metrics.get("test")
    if test:
        print("test accuracy: " + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in test.items()))
    if "total_seconds" in metrics:
        print(f"saved to {args.out} after {metrics['total_seconds'] / 60:.1f} min")
    return 0


def add_train_clip_retriever_parser(subparsers) -> argparse.ArgumentParser:
    """Register `clip-retriever` (vidpress train clip-retriever --out DIR ...) on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "clip-retriever",
        help="train a tiny CLIP-style dual encoder for MARC's retrieval on the long family",
        description="Train a tiny transformers CLIPModel (random init) contrastively on the synthetic long family: "
        "each clip's question text against the frames of its asked event, with the clip's distractor and empty "
        "frames as negatives. Save it with its processor (loads with CLIPEmbedder.from_pretrained), measure "
        "VisualMemoryRetriever's top-1 / top-3 hit rate on the long test split, write metrics.json and MODEL_CARD.md.",
    )
    parser.add_argument("--out", required=True, help="output folder (save_pretrained layout)")
    parser.add_argument("--train-examples", type=int, default=2000, help="long-family train examples (default 2000)")
    parser.add_argument("--keys", default="shape",
                        help="comma-separated question keys of the long family to train on, an equal share each "
                        "(default shape: 'What colour was the flashing ring?' is a shape question about the ring; "
                        "colour,shape together learned colour only in 1500 steps: docs/retrieval.md)")
    parser.add_argument("--steps", type=int, default=1500, help="optimiser steps (default 1500)")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per step (default 8)")
    parser.add_argument("--distractor-frames", type=int, default=6,
                        help="distractor-flash frames per clip and step (default 6)")
    parser.add_argument("--empty-frames", type=int, default=2, help="empty frames per clip and step (default 2)")
    parser.add_argument("--windows", type=int, default=3,
                        help="random frame windows per clip and step for the clip-level term (default 3; 0: off)")
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (default %(default)s)")
    parser.add_argument("--test-examples", type=int, default=240,
                        help="long-family test examples to measure retrieval on (default 240; 0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=_run_train_clip_retriever)
    return parser


def _run_train_clip_retriever(args) -> int:
    from vidpress.training.clip_retriever import train_clip_retriever

    check_at_least(args, 1, "train_examples", "steps", "batch_size", "threads")
    check_at_least(args, 0, "distractor_frames", "empty_frames", "windows", "test_examples")
    metrics = train_clip_retriever(
        args.out, train_examples=args.train_examples, keys=tuple(k.strip() for k in args.keys.split(",")),
        steps=args.steps, batch_size=args.batch_size,
        distractor_frames=args.distractor_frames, empty_frames=args.empty_frames, windows=args.windows,
        lr=args.lr,
        test_examples=args.test_examples, seed=args.seed, threads=args.threads, progress=not args.quiet,
        command=_command("clip-retriever"),
    )
    summary = "".join(f"; {key} test top-1 {t['top1']:.3f}, top-3 {t['top3']:.3f}"
                      for key, t in metrics.get("test", {}).items())
    print(f"saved to {args.out} after {metrics['train_seconds'] / 60:.1f} min{summary}")
    return 0
