"""What several commands share: option groups, the retrieval step, the layer-press checks and notes."""

from __future__ import annotations

import argparse


def check_retrieve(args) -> None:
    if args.retrieve is not None and args.retrieve < 1:
        raise ValueError(f"--retrieve must be a number of clips >= 1; got {args.retrieve}")
    if args.embedder is not None and args.retrieve is None:
        raise ValueError("--embedder chooses the embedder of --retrieve; pass --retrieve K too")


def check_at_least(args, minimum: int, *names: str) -> None:
    """Options that count something: ValueError naming the first of `names` (argparse dests) below `minimum`
    (None, an option not given, passes)."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            accepted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise ValueError(f"--{name.replace('_', '-')} must be {accepted}; got {value}")


def check_layer_press(press, model, args, demo: bool = False) -> None:
    """A press acting inside the LLM must fit the model's depth; say so, with the layer floor, before any work.
    model: the model, or its number of LLM decoder layers. demo: the model is `generate`'s tiny demo model (the
    error then names a deeper one)."""
    from vidpress.presses.base import LayerPress

    if not isinstance(press, LayerPress):
        return
    layers = model if isinstance(model, int) else model.config.get_text_config().num_hidden_layers
    try:
        press.schedule(layers)
    except ValueError as error:
        hint = ""
        if demo:
            hint = ("; the demo model is tiny: leave out --model for the shipped reference model "
                    "--model vidpress/synthetic/reference_model (4 layers)")
        raise ValueError(f"--press {args.press} drops tokens between LLM layers and does not fit this model's {layers} "
                         f"layers ({error}){hint}") from None


def layer_summary(report) -> str:
    """'LLM layers processed 128, 128, 35, 35 of them (layer average 0.637)' for a press acting inside the LLM."""
    before = (f"; {report.retention_before_llm:.3f} enter the LLM (the press also acts before it)"
              if report.retention_before_llm < 1 else "")
    return (f"LLM layers processed {', '.join(str(n) for n in report.layer_tokens)} of them "
            f"(layer average {report.retention:.3f} = effective retention{before})")


def floor_note(report, requested: float) -> None:
    """Print why the effective retention is above the requested one, when it is."""
    if report.layer_tokens and report.retention > requested + 0.01 and report.retention_before_llm < 1:
        print(f"note: effective retention {report.retention:.3f} > requested {requested:g}: the press rounds its "
              f"budgets up (per frame before the LLM, which keeps {report.retention_before_llm:.3f}, and per sample "
              "inside it)")
    elif report.layer_tokens and report.retention > requested + 0.01:
        print(f"note: effective retention {report.retention:.3f} > requested {requested:g}: the LLM layers before "
              "the press's first stage see every token, so it cannot go lower on this model's "
              f"{len(report.layer_tokens)} layers")


def make_retriever(args, model, processor):
    """The top-`--retrieve` clip retriever: a CLIP/SigLIP folder (`--embedder`) or the VLM's own embeddings."""
    from vidpress.retrieval import CLIPEmbedder, VisualMemoryRetriever, VLMEmbedder

    progress = not getattr(args, "quiet", False)
    if args.embedder:
        embedder = CLIPEmbedder.from_pretrained(args.embedder, device=args.device, progress=progress)
        name = f"CLIPEmbedder({args.embedder})"
    else:
        embedder, name = VLMEmbedder(model, processor, progress=progress), "VLMEmbedder (the model's own features)"
    return VisualMemoryRetriever(embedder, top_k=args.retrieve, progress=progress), name


def retrieve_episode(args, model, processor, video_path, decoded):
    """MARC's retrieval before the encoder: cut the whole file into events, keep the sampled frames of the top-k
    clips for the question (the episodic memory video)."""
    import dataclasses

    from vidpress.inputs import pad_frames

    retriever, name = make_retriever(args, model, processor)
    memory = retriever.index_video(video_path)
    frames, indices = retriever.episodic_video(decoded.frames, args.question, memory=memory,
                                               frame_indices=decoded.frame_indices)
    clips = [c for c in memory.clips if any(c[0] <= i < c[1] for i in indices.tolist())]
    print(f"retrieval ({name}): {len(memory.clips)} event clips; top-{args.retrieve} {clips} keep {len(frames)} of "
          f"{len(decoded.frames)} sampled frames {indices.tolist()}")
    position = {index: k for k, index in enumerate(decoded.frame_indices)}
    timestamps = [decoded.timestamps[position[i]] for i in indices.tolist()]
    frames, kept = pad_frames(frames, indices.tolist(), model)
    timestamps += [timestamps[-1]] * (len(kept) - len(timestamps))
    return dataclasses.replace(decoded, frames=frames, frame_indices=kept, timestamps=timestamps)


def split_names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def video_press_options(command: argparse.ArgumentParser, default_model: str) -> None:
    """The options of the commands that press one video: model, video, question, press, retention, frames, device."""
    from vidpress import presses

    command.add_argument("--model", help=f"local model directory (default: {default_model})")
    command.add_argument("--video", help="video file (default: the bundled sample clip)")
    command.add_argument("--question", default="What happens in this video?",
                         help="the question (default: %(default)r)")
    command.add_argument("--press", default="vidcom2", choices=presses.available() + list(presses.fca_variants()),
                         help="press name; NAME+fca is NAME with --frame-budgets vidcom2 (default: %(default)s)")
    command.add_argument("--retention", type=float, default=0.25,
                         help="fraction of video tokens kept, in (0, 1] (default: %(default)s)")
    command.add_argument("--num-frames", type=int, default=16,
                         help="frames sampled evenly from the video (default: %(default)s)")
    frame_budgets_option(command)
    policy_option(command)
    command.add_argument("--device", default=default_device(), help="torch device (default: %(default)s)")


def retrieve_options(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument("--retrieve", type=int, metavar="K", help=what)
    command.add_argument("--embedder", metavar="PATH", help="local CLIP/SigLIP-style folder embedding clips and the "
                         "question for --retrieve (default: the model's own vision features and text embeddings)")


def runtime_options(command: argparse.ArgumentParser, dtype: str) -> None:
    """--device, --dtype (default `dtype`; "auto" = the checkpoint's own) and --attn of the commands that load a
    model."""
    dtypes = ["float32", "bfloat16", "float16"] if dtype != "auto" else ["auto", "float32", "bfloat16", "float16"]
    command.add_argument("--device", default=default_device(), help="torch device (default: %(default)s)")
    command.add_argument("--dtype", default=dtype, choices=dtypes, help="weights dtype (default: %(default)s)")
    command.add_argument("--attn", default="sdpa", choices=["eager", "sdpa", "flash_attention_2"],
                         help="attention implementation (default: %(default)s)")


def frame_budgets_option(command: argparse.ArgumentParser) -> None:
    from vidpress import presses

    hosts = ", ".join(presses.fca_variants().values())
    command.add_argument("--frame-budgets", choices=["vidcom2"], help="per-frame budgets from VidCom²'s frame "
                         f"uniqueness, the press's own ranking inside each frame (FCA; presses {hosts})")


def policy_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--policy", help="trained policy folder for --press cacovid (e.g. "
                         "vidpress/synthetic/cacovid_reference, trained for the shipped reference model)")


def default_device() -> str:
    """cuda where torch sees a GPU, else cpu (the --device default)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
