"""The `vidpress` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from vidpress.cli import bench, evaluate, generate, inspect_press, profiling, stream


def _version() -> str:
    import vidpress  # the package root holds the version

    return vidpress.__version__


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="vidpress", description="Visual-token compression for Video LLMs.")
    top.add_argument("-v", "--verbose", action="store_true", help="log what the presses do")
    top.add_argument("--version", action="version", version=f"vidpress {_version()}")
    sub = top.add_subparsers(dest="command", required=True)
    for command in (generate, stream, bench, inspect_press, evaluate, profiling):  # the order of `vidpress --help`
        command.add_parser(sub)
    train = sub.add_parser("train", help="train a model or a learned press",
                           description="Train a model or a learned press.")
    from vidpress.cli.train import add_train_parsers

    add_train_parsers(train.add_subparsers(dest="trainer", required=True))
    return top


# What each `vidpress train` trainer imports from the [train] extra (checked before any work starts).
TRAIN_NEEDS = {"cacovid": ("accelerate",), "cgrpo": ("trl", "accelerate", "datasets")}
# The extra that provides each optional import, for the one-line error when one is missing.
EXTRA_OF = {"trl": "train", "peft": "train", "datasets": "train", "accelerate": "eval", "pyarrow": "eval",
            "faiss": "retrieval"}


def check_device(device: str) -> str:
    """`device` if torch can use it here; ValueError naming what is wrong and what is accepted otherwise."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device!r} is not a torch device; pass e.g. cpu, cuda or cuda:1") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"--device {device}: CUDA is not available ({why}); use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here (cuda:0 ...)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available here; use --device cpu")
    return device


def install_hint(extra: str) -> str:
    """How to install an extra, in the README's form: from the source folder, torch pinned by constraints.txt."""
    return f'pip install -c constraints.txt -e ".[{extra}]" (in the vidpress source folder)'


def _check_train_extra(args) -> None:
    import importlib.util

    needed = list(TRAIN_NEEDS.get(args.trainer, ()))
    if getattr(args, "lora", False):
        needed.append("peft")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"vidpress train {args.trainer} needs {', '.join(missing)} from the [train] extra: "
                         f"{install_hint('train')}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        if getattr(args, "device", None) is not None:
            check_device(args.device)
        if args.command == "train":
            _check_train_extra(args)
        return args.run(args)
    except ValueError as error:  # bad input: say what was wrong, no traceback
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:  # an optional dependency: name the extra that installs it
        package = (error.name or "").split(".")[0]
        extra = EXTRA_OF.get(package)
        hint = f": {install_hint(extra)}" if extra else ""
        print(f"error: vidpress {args.command} needs the {package or error} package{hint}", file=sys.stderr)
        return 2
    except Exception as error:  # anything else still gets one line; -v shows where it came from
        if args.verbose:
            raise
        print(f"error: {type(error).__name__}: {_one_line(error)} "
              f"(`vidpress -v {args.command} ...` shows the traceback)", file=sys.stderr)
        return 1


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())
