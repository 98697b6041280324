"""lmms-eval bridge: `--model vidpress` runs any supported local model with any press on lmms-eval's tasks.

    python -m lmms_eval --model vidpress \\
        --model_args pretrained=DIR,press=vidcom2,retention=0.25,max_frames_num=32 --tasks videomme

Registered through the `lmms_eval.models` entry point of vidpress's package metadata, so lmms-eval finds it
once vidpress is installed. Each request's videos are decoded with PyAV (frames evenly spaced, as lmms-eval's
own video models sample them), images pass through, and the prompt goes through the model's chat template
with the videos first; `generate` then runs inside the press block. Only generation tasks are supported:
log-likelihood scoring would need the continuation's logits mapped through the pruned sequence.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from lmms_eval.api.model import lmms
from tqdm.auto import tqdm

import vidpress  # noqa: F401  (before transformers' processors: the torchvision shim)
from vidpress.evaluation.benchmarks import decode_indices
from vidpress.inputs import build_inputs
from vidpress.loading import build_press, load_model

MODEL_ID = "vidpress"


def manifest():
    """The entry point's payload: how lmms-eval finds this model class."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.VidpressLMM")


class VidpressLMM(lmms):
    """A local Hugging Face Video LLM (any family vidpress supports) with a press applied to every generation.

    pretrained: local model folder. press: a registered press name, or "none" for all tokens.
    retention: the press's retention in (0, 1]. max_frames_num: frames sampled per video (evenly spaced).
    device / dtype / attn_implementation: as for `from_pretrained`; batch_size must be 1 (videos differ in length).
    policy: a trained policy folder for press=cacovid (`vidpress train cacovid`).
    """

    is_simple = True

    def __init__(self, pretrained: str, press: str = "none", retention: float = 0.25, max_frames_num: int = 32,
                 device: str | None = None, dtype: str = "auto", attn_implementation: str = "sdpa",
                 batch_size: int | str = 1, policy: str | None = None, **unknown) -> None:
        super().__init__()
        if unknown:
            raise ValueError(
                f"unknown model_args {sorted(unknown)}; accepted: pretrained, press, retention, max_frames_num, "
                "device, dtype, attn_implementation, batch_size, policy"
            )
        if int(batch_size) != 1:
            raise ValueError(f"the vidpress model answers one request at a time (batch_size 1); got {batch_size}")
        if int(max_frames_num) <= 0:
            raise ValueError(f"max_frames_num must be a positive integer; got {max_frames_num}")
        self.max_frames_num = int(max_frames_num)
        # lmms-eval shards requests itself from RANK / WORLD_SIZE; each process takes its own GPU when it has one.
        self._rank = int(os.environ.get("RANK", 0))
        self._world_size = int(os.environ.get("WORLD_SIZE", 1))
        if device is None:
            device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
        self._model, self.processor = load_model(str(pretrained), attn_implementation, device, dtype)
        self._device = self._model.device
        self.press = None if press == "none" else build_press(str(press), retention, policy)

    @property
    def model(self):
        return self._model

    @property
    def device(self):
        return self._device

    @property
    def batch_size(self) -> int:
        return 1

    def _frames(self, path: str):
        count = self.max_frames_num
        return decode_indices(path, lambda total, fps: np.unique(np.linspace(0, total - 1, count).astype(np.int64)))

    def _inputs(self, context: str, visuals: list) -> dict:
        videos = [self._frames(v) for v in visuals if isinstance(v, (str, os.PathLike))]
        images = [v for v in visuals if not isinstance(v, (str, os.PathLike))]
        inputs = build_inputs(self.processor, [context], [[v.frames for v in videos]], [images],
                              metadata=[[v.metadata() for v in videos]])
        return inputs.to(self._device)

    @torch.no_grad()
    def generate_until(self, requests) -> list[str]:
        """Greedy (or sampled, per the task's temperature) answers, cut at the task's stop strings."""
        answers = []
        for request in tqdm(requests, desc="vidpress generating", disable=self.rank != 0):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
            inputs = self._inputs(context, visuals if isinstance(visuals, list) else [visuals])
            gen = dict(gen_kwargs)
            until = gen.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(gen.get("temperature", 0) or 0)
            options = dict(max_new_tokens=int(gen.get("max_new_tokens", 128)), do_sample=temperature > 0,
                           num_beams=int(gen.get("num_beams", 1) or 1))
            if temperature > 0:
                options.update(temperature=temperature, top_p=gen.get("top_p") or 1.0)
            if self.press is None:
                output = self._model.generate(**inputs, **options)
            else:
                with self.press(self._model):
                    output = self._model.generate(**inputs, **options)
            text = self.processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
            for stop in until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            answers.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return answers

    def loglikelihood(self, requests):
        raise NotImplementedError(
            "the vidpress model supports generation tasks (output_type: generate_until) only; log-likelihood "
            "scoring would need the continuation's logits mapped through the pressed sequence"
        )

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("the vidpress model supports single-round generation tasks only")
