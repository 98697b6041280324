"""The vidpress plugin behind vLLM's OpenAI server (`python -m vidpress.serving.vllm serve ...`, the CPU build), as a
deployer runs it: mixed media requests, start-up checks of the configuration, and what the logs say.

Each server is a subprocess on a tiny random-weight model; starting one takes 1-3 minutes on the 2-core CPU machine.
Skipped where vLLM is not importable (the default test venv); `.ci/vllm` runs them.
"""

import base64
import io
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time

import pytest

import vidpress  # noqa: F401  (torchvision fix before vLLM imports it)

if os.environ.get("VIDPRESS_REQUIRE_VLLM"):  # .ci/vllm: a broken vLLM install must fail, not skip
    import vllm  # noqa: F401
else:
    pytest.importorskip("vllm", reason="vLLM is not installed in this venv (docs/vllm.md; .ci/vllm runs these)")

import av  # noqa: E402
import numpy as np  # noqa: E402
import requests  # noqa: E402
from PIL import Image  # noqa: E402

from vidpress.presses import PRESSES, press_key  # noqa: E402
from vidpress.serving.vllm import ARCHITECTURES, applicable_presses, press_knobs, refusal_reason  # noqa: E402
from vidpress.testing import tiny_image, tiny_video  # noqa: E402

ARCH = {model_type: arch for arch, (model_type, _) in ARCHITECTURES.items()}
RATE = 0.75
START_TIMEOUT = 1200  # s: 2-3 min on the 2-core machine; over 10 min when it is heavily loaded
# INFO: the tests read vidpress's start-up and per-video lines (other test modules lower vLLM's level in os.environ)
ENV = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
       "VLLM_LOGGING_LEVEL": "INFO"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(model, architecture, settings, *extra, port=None, rate=RATE):
    command = [sys.executable, "-m", "vidpress.serving.vllm", "serve", str(model), "--dtype", "float32",
               "--max-model-len", "2048", "--enforce-eager", "--max-num-seqs", "4"]
    if rate is not None:
        command += ["--video-pruning-rate", str(rate)]
    if architecture is not None:
        command += ["--hf-overrides", json.dumps({"architectures": [architecture]})]
    if settings is not None:
        command += ["--additional-config", json.dumps(settings)]
    if port is not None:
        command += ["--port", str(port)]
    return command + list(extra)


def mp4_url(frames, fps=4):
    """frames uint8 [T, H, W, 3] as an H.264 mp4 data URL."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    return "data:video/mp4;base64," + base64.b64encode(buffer.getvalue()).decode()


def png_url(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


VIDEOS = [mp4_url(tiny_video(8, 56, 84, seed=seed)) for seed in range(3)]
IMAGE = png_url(tiny_image(56, 56, seed=7))


def part(kind, index=0):
    if kind == "video":
        return {"type": "video_url", "video_url": {"url": VIDEOS[index]}}
    return {"type": "image_url", "image_url": {"url": IMAGE}}


def user(*parts, text="What happens?"):
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


# every order of a video with a second video or an image, and a second turn with a video
MIXES = {
    "video+video": [user(part("video", 0), part("video", 1))],
    "video+image": [user(part("video", 0), part("image"))],
    "image+video": [user(part("image"), part("video", 0))],
    "three videos": [user(part("video", 0), part("video", 1), part("video", 2))],
    "two turns with a video each": [user(part("video", 0)), {"role": "assistant", "content": "A square moves."},
                                    user(part("video", 1), text="And now?")],
}
PLAIN = {"text": [{"role": "user", "content": "Hello"}], "one video": [user(part("video", 2))]}


class Server:
    """A `python -m vidpress.serving.vllm serve` subprocess; its output goes to a log file."""

    def __init__(self, command, log_path):
        self.log_path = log_path
        self.port = int(command[command.index("--port") + 1])
        self.log = open(log_path, "w")
        # a session of its own: stop() ends the API server with the engine and worker processes it started
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=ENV,
                                        start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"server did not start (exit {self.process.returncode}):\n{self.output()[-5000:]}")
            time.sleep(2)

    def healthy(self) -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{self.port}/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def chat(self, messages):
        model = requests.get(f"http://127.0.0.1:{self.port}/v1/models", timeout=30).json()["data"][0]["id"]
        return requests.post(f"http://127.0.0.1:{self.port}/v1/chat/completions", timeout=300, json={
            "model": model, "messages": messages, "max_tokens": 3, "temperature": 0.0})

    def output(self) -> str:
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 30)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:  # the whole group has exited
                break
            try:
                self.process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            time.sleep(2)  # the engine and worker processes leave after the API server
        self.log.close()


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """One server per family (the previous one stopped first)."""
    running = {}

    def get(family):
        if family not in running:
            for other in list(running):
                running.pop(other).stop()
            log = tmp_path_factory.mktemp("logs") / f"{family}.log"
            command = serve_command(model_dir(family), ARCH[family], {"vidpress": {"press": "divprune"}},
                                    "--limit-mm-per-prompt", json.dumps({"video": 3, "image": 1}), port=free_port())
            running[family] = Server(command, log)
        return running[family]

    yield get
    for process in running.values():
        process.stop()


@pytest.mark.slow
def test_qwen2_5_vl_serves_every_media_mix(server):
    """Qwen2.5-VL: every order and mix is answered (positions: tests/serving/test_vllm_positions.py and the
    transformers comparison in test_vllm_plugin.py), and the server answers plain requests afterwards."""
    srv = server("qwen2_5_vl")
    for name, messages in {**MIXES, **PLAIN}.items():
        response = srv.chat(messages)
        assert response.status_code == 200, (name, response.text, srv.output()[-3000:])
        assert response.json()["usage"]["completion_tokens"] > 0, name
    log = srv.output()
    # the start-up line naming the press and its knobs, and one line per pruned video
    assert "vidpress: press divprune at retention 0.25 (--video-pruning-rate 0.75" in log
    assert "knobs {'frame_budgets': None, 'compute_dtype': 'float32'}" in log
    lines = re.findall(r"vidpress: divprune kept (\d+) of (\d+) video tokens \(grid (\d+)x(\d+)x(\d+)\) in [\d.]+ ms",
                       log)
    assert len(lines) >= len(VIDEOS), log[-3000:]  # one per video encoded (vLLM caches a repeated video's encoding)
    for kept, total, t, h, w in (map(int, line) for line in lines):
        assert total == t * h * w and kept == max(h * w, int(total * (1 - RATE))), (kept, total, t, h, w)


@pytest.mark.slow
def test_qwen3_vl_refuses_a_video_beside_other_media(server):
    """Qwen3-VL: a video with any other image or video is answered with HTTP 400 naming what is not served, and the
    server keeps answering."""
    srv = server("qwen3_vl")
    for name, messages in MIXES.items():
        response = srv.chat(messages)
        assert response.status_code == 400, (name, response.text)
        assert "Qwen3-VL with video pruning serves one video per request and no image beside it" in response.text
    for name, messages in {**PLAIN, "one image": [user(part("image"))]}.items():
        response = srv.chat(messages)
        assert response.status_code == 200, (name, response.text, srv.output()[-3000:])


# -- start-up checks: a bad configuration fails in the API server, before any model or worker, with one line -----
FIRST_WORKING = applicable_presses()[0]
FIRST_REFUSED = next(name for name in sorted(PRESSES) if refusal_reason(PRESSES[name]) is not None)
BAD_CONFIGS = {
    "unknown press": (ARCH["qwen2_5_vl"], {"press": "nope"}, RATE,
                      "vidpress: unknown press 'nope'; presses that run in vLLM: " + ", ".join(applicable_presses())),
    "refused press": (ARCH["qwen2_5_vl"], {"press": FIRST_REFUSED}, RATE,
                      f"vidpress: press '{FIRST_REFUSED}' cannot run in vLLM: "),
    "unknown knob": (ARCH["qwen2_5_vl"], {"press": FIRST_WORKING, "bogus": 1}, RATE,
                     f"vidpress: press '{press_key(FIRST_WORKING)}' has no knob 'bogus'; its knobs: "
                     + ", ".join(press_knobs(PRESSES[press_key(FIRST_WORKING)]))),
    "bad knob value": (ARCH["qwen2_5_vl"], {"press": "vidcom2", "tau": -1}, RATE,
                       "vidpress: press 'vidcom2' refuses {'tau': -1}: tau must be > 0"),
    "missing rate": (ARCH["qwen2_5_vl"], {"press": FIRST_WORKING}, None,
                     f"vidpress: press '{FIRST_WORKING}' needs --video-pruning-rate in (0, 1)"),
    # 0 turns vLLM's pruning off (vLLM itself refuses a rate >= 1 or < 0 with its own one-line message)
    "zero rate": (ARCH["qwen3_vl"], {"press": FIRST_WORKING}, 0.0,
                  f"vidpress: press '{FIRST_WORKING}' needs --video-pruning-rate in (0, 1)"),
    "retention given": (ARCH["qwen2_5_vl"], {"press": FIRST_WORKING, "retention": 0.3}, RATE,
                        "vidpress: the retention comes from --video-pruning-rate"),
    "no vidpress architecture": (None, {"press": FIRST_WORKING}, RATE,
                                 "vidpress: --additional-config has vidpress settings, but the model runs vLLM's own "
                                 "Qwen2_5_VLForConditionalGeneration, which ignores them; add --hf-overrides "
                                 f"'{{\"architectures\": [\"{ARCH['qwen2_5_vl']}\"]}}'"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_config_fails_while_vllm_builds_its_config(model_dir, case):
    """The check runs where the API server builds vLLM's configuration (`EngineArgs.create_engine_config`), before
    any engine or worker: a one-line message, within seconds."""
    from vllm.engine.arg_utils import EngineArgs

    from vidpress.serving.vllm import vidpress_error

    architecture, settings, rate, message = BAD_CONFIGS[case]
    family = "qwen3_vl" if architecture == ARCH["qwen3_vl"] else "qwen2_5_vl"
    args = EngineArgs(model=str(model_dir(family)), hf_overrides={"architectures": [architecture]} if architecture
                      else {}, additional_config={"vidpress": settings}, video_pruning_rate=rate, dtype="float32")
    start = time.monotonic()
    with pytest.raises(Exception) as caught:
        args.create_engine_config()
    assert time.monotonic() - start < 30
    line = vidpress_error(caught.value)
    assert line is not None and "\n" not in line, caught.value
    assert line.startswith(message), line


@pytest.mark.slow
def test_bad_config_fails_at_the_command_line_in_one_line(model_dir):
    """Through the launcher: exit status 1 and a last line `error: vidpress: ...`, no engine started; CPU time (not
    wall time, which the shared CI machine's load stretches) bounded: the failure comes before any model loads."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(serve_command(model_dir("qwen2_5_vl"), ARCH["qwen2_5_vl"],
                                          {"vidpress": {"press": "divprune", "bogus": 1}}, port=free_port()),
                            capture_output=True, text=True, timeout=START_TIMEOUT, env=ENV)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    last = output.strip().splitlines()[-1]
    assert last.startswith("error: vidpress: press 'divprune' has no knob 'bogus'; its knobs: "), output[-3000:]
    assert "Traceback" not in output and "EngineCore" not in output, output[-3000:]
    assert cpu < 60, f"{cpu:.0f} s of CPU before failing"
