"""`vidpress eval` end to end on a tiny model: results per category, resuming, sharding over two processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_benchmarks import WRITERS

from vidpress.cli import main


@pytest.fixture(scope="module")
def model_dir(tiny_model, tiny_cache):
    tiny_model("qwen2_5_vl")  # builds it into the session cache
    return str(tiny_cache / "qwen2_5_vl")


def eval_args(model_dir, data, out, *extra):
    return ["eval", "--model", model_dir, "--bench", "mlvu", "--data", str(data), "--num-frames", "4",
            "--max-new-tokens", "3", "--out", str(out), "--device", "cpu", "--quiet", *extra]


def test_eval_scores_per_category_and_resumes(model_dir, tmp_path, capsys):
    data, count = WRITERS["mlvu"](tmp_path / "mlvu")
    out = tmp_path / "run"
    assert main(eval_args(model_dir, data, out, "--press", "vidcom2", "--retention", "0.5")) == 0
    printed = capsys.readouterr().out
    assert "mlvu: accuracy" in printed and "M-Avg" in printed and "by task:" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["samples"] == count and set(results["by"]["task"]) == {
        "plotQA", "needle", "ego", "count", "order", "anomaly_reco", "topic_reasoning"}
    assert 0.4 < results["effective_retention"] < 0.6
    record = json.loads((out / "samples" / "count-0000.json").read_text())
    assert record["kept_tokens"] < record["visual_tokens"] and record["frames"] == 4 and "response" in record

    # Resume: answered questions are not asked again, a missing one is.
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "samples").iterdir()}
    (out / "samples" / "ego-0000.json").unlink()
    assert main(eval_args(model_dir, data, out, "--press", "vidcom2", "--retention", "0.5")) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (out / "samples").iterdir()}
    assert after.keys() == stamps.keys()
    assert all(after[name] == stamps[name] for name in stamps if name != "ego-0000.json")

    # Other settings on the same folder are refused, naming what changed.
    assert main(eval_args(model_dir, data, out, "--press", "vidcom2", "--retention", "0.25")) == 2
    assert "retention: 0.5 -> 0.25" in capsys.readouterr().err

    # A damaged record (0 bytes) or settings file is named, with the way out, before any question is asked.
    (out / "samples" / "ego-0000.json").write_text("")
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "samples").iterdir()}
    assert main(eval_args(model_dir, data, out, "--press", "vidcom2", "--retention", "0.5")) == 2
    error = capsys.readouterr().err
    assert f"{out / 'samples' / 'ego-0000.json'}: the answer record is empty" in error
    assert "delete it to answer that question again" in error
    assert {p.name: p.stat().st_mtime_ns for p in (out / "samples").iterdir()} == stamps
    (out / "run.json").write_text("{")
    assert main(eval_args(model_dir, data, out, "--press", "vidcom2", "--retention", "0.5")) == 2
    assert f"{out / 'run.json'}: the settings record is not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--bench", "mlvu", "--retention", "0"], "retention must be in (0, 1]"),
    (["--bench", "mlvu", "--num-frames", "0"], "--num-frames must be a positive integer"),
    (["--bench", "longvideobench"], "lvb_val.json: the LongVideoBench annotation file is missing"),
])
def test_eval_bad_input_is_a_clear_error(model_dir, tmp_path, capsys, argv, message):
    data, _ = WRITERS["mlvu"](tmp_path / "mlvu")
    args = ["eval", "--model", model_dir, "--data", str(data), "--out", str(tmp_path / "o"), "--quiet", *argv]
    assert main(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_eval_shards_over_two_processes_with_accelerate(model_dir, tmp_path):
    pytest.importorskip("accelerate")
    data, count = WRITERS["mvbench"](tmp_path / "mvbench")
    out = tmp_path / "run"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
              "-m", "vidpress", "eval", "--model", model_dir, "--bench", "mvbench", "--data", str(data), "--limit", "6",
              "--num-frames", "4", "--max-new-tokens", "2", "--press", "random", "--out", str(out), "--device", "cpu",
              "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(launch, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mvbench: accuracy" in done.stdout and done.stdout.count("mvbench: accuracy") == 1  # main process only
    records = [json.loads(p.read_text()) for p in (out / "samples").iterdir()]
    assert len(records) == 6 and {r["process"] for r in records} == {0, 1}
    assert json.loads((out / "results.json").read_text())["samples"] == 6


def test_eval_records_its_settings_and_refuses_other_ones(model_dir, tmp_path, capsys):
    import shutil

    from vidpress.evaluation import runner
    from vidpress.evaluation.testbed import CACOVID_REFERENCE_DIR

    data, count = WRITERS["mlvu"](tmp_path / "mlvu")
    out = tmp_path / "run"
    assert main(eval_args(model_dir, data, out, "--press", "random", "--limit", "3")) == 0
    settings = json.loads((out / "run.json").read_text())
    assert settings["data"] == str(data.resolve()) and settings["model"] == str(Path(model_dir).resolve())
    assert settings["press_knobs"] == {"seed": 0, "frame_budgets": None} and settings["policy"] is None
    capsys.readouterr()

    # The same questions from another data folder: refused before the model loads, naming the folders.
    other = tmp_path / "mlvu-copy"
    shutil.copytree(data, other)
    assert main(eval_args(model_dir, other, out, "--press", "random", "--limit", "3")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data: " in err and "mlvu-copy" in err and "--overwrite" in err

    # --overwrite discards the earlier answers and records the new settings.
    answered = sorted((out / "samples").iterdir())
    stamps = [p.stat().st_mtime_ns for p in answered]
    assert main(eval_args(model_dir, other, out, "--press", "random", "--limit", "3", "--overwrite")) == 0
    assert json.loads((out / "run.json").read_text())["data"] == str(other.resolve())
    assert sorted((out / "samples").iterdir()) == answered
    assert all(p.stat().st_mtime_ns != stamp for p, stamp in zip(answered, stamps))

    # A trained policy is recorded by its folder and contents: a retrained policy in the same folder is refused.
    policy = tmp_path / "policy"
    shutil.copytree(CACOVID_REFERENCE_DIR, policy)
    from vidpress.loading import build_press

    recorded = runner.run_settings(benchmark="mlvu", model=model_dir, data=data,
                                   press=build_press("cacovid", 0.25, str(policy)),
                                   press_name="cacovid", policy=policy, num_frames=4, max_new_tokens=3,
                                   dtype="auto", attn="sdpa")
    assert recorded["press_knobs"]["imp_ratio"] == 0.5 and "policy" not in recorded["press_knobs"]
    cacovid_out = tmp_path / "cacovid"
    runner.check_run_settings(cacovid_out, recorded)
    with (policy / "metrics.json").open("a") as handle:
        handle.write(" ")
    argv = eval_args(model_dir, data, cacovid_out, "--press", "cacovid", "--policy", str(policy), "--retention", "0.25")
    assert main(argv) == 2
    assert "policy_sha256" in capsys.readouterr().err
