"""`vidpress generate` end to end on the bundled real clip with a tiny model."""

import pytest

from vidpress.cli import main


def test_generate_prints_the_report(tiny_model, tiny_cache, capsys):
    tiny_model("qwen2_5_vl")  # builds the model folder into the cache
    code = main(["generate", "--model", str(tiny_cache / "qwen2_5_vl"), "--num-frames", "8", "--max-new-tokens", "4",
                 "--repeats", "1", "--retention", "0.25", "--attn", "eager"])
    out = capsys.readouterr().out
    assert code == 0
    assert "answer:" in out and "visual tokens:" in out and "per-frame budgets" in out and "LLM prefill:" in out
    before, after = out.split("visual tokens: ")[1].split(" (")[0].split(" -> ")
    assert int(after) < int(before)


def test_generate_defaults_to_the_reference_model_and_runs_the_demo_on_request(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("VIDPRESS_CACHE", str(tmp_path))
    assert main(["generate", "--num-frames", "4", "--max-new-tokens", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "the shipped reference model" in out and "random-weight" not in out
    assert main(["generate", "--model", "demo", "--num-frames", "4", "--max-new-tokens", "2", "--repeats", "1"]) == 0
    assert "random-weight demo model" in capsys.readouterr().out


def test_version(capsys):
    import vidpress

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"vidpress {vidpress.__version__}"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "--retention", "0"], "retention"),
        (["generate", "--video", "/no/such/video.mp4"], "no/such/video.mp4"),
        (["generate", "--model", "/no/such/model"], "--model"),
    ],
)
def test_generate_bad_input_is_a_clear_error(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_learned_press_needs_and_loads_a_policy(tmp_path, capsys):
    from vidpress.cli import main

    assert main(["generate", "--press", "cacovid"]) == 2
    assert "needs a trained policy: pass --policy DIR" in capsys.readouterr().err
    assert main(["generate", "--press", "vidcom2", "--policy", str(tmp_path)]) == 2
    assert "--policy is for presses with a trained policy" in capsys.readouterr().err
    assert main(["inspect", "--press", "cacovid", "--policy", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    out = tmp_path / "kept.png"
    from vidpress.evaluation.testbed import CACOVID_REFERENCE_DIR

    assert main(["inspect", "--press", "cacovid", "--policy", str(CACOVID_REFERENCE_DIR),
                 "--retention", "0.1", "--out", str(out)]) == 0
    assert out.is_file() and "kept 44/440 tokens" in capsys.readouterr().out


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "Loading weights" not in line]  # progress bars
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_in_llm_press_reports_what_the_layers_processed(capsys):
    from vidpress.synthetic.reference import REFERENCE_DIR

    assert main(["generate", "--model", str(REFERENCE_DIR), "--press", "pdrop", "--num-frames", "8",
                 "--max-new-tokens", "2", "--repeats", "1", "--attn", "eager"]) == 0
    out = capsys.readouterr().out
    assert "visual tokens: 220 enter the LLM; LLM layers processed 220, 1, 1, 1 of them (layer average 0.253" in out
    assert "-> 1 " not in out and "sequence 264 (cut inside the LLM)" in out


def test_inspect_in_llm_press(tmp_path, capsys):
    out = tmp_path / "fastv.png"
    assert main(["inspect", "--press", "fastv", "--num-frames", "8", "--retention", "0.75", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "LLM layers processed 220, 220, " in printed and "the last LLM layers keep" in printed
    assert "kept 220/220" not in printed and out.is_file()
    kept = int(printed.split("keep ")[1].split("/")[0])
    assert kept == round(0.5 * 220)  # (2 * 220 + 2 * kept) / 4 = 0.75 * 220


def test_frame_budgets_by_name_or_option(tmp_path, capsys):
    """`--press NAME+fca` and `--press NAME --frame-budgets vidcom2` are the same press: VidCom²'s per-frame budgets."""
    printed = []
    for argv in (["--press", "fastv+fca"], ["--press", "fastv", "--frame-budgets", "vidcom2"]):
        assert main(["inspect", *argv, "--num-frames", "8", "--retention", "0.75", "--out",
                     str(tmp_path / "kept.png")]) == 0
        printed.append(capsys.readouterr().out.split("\n", 1)[1])  # after the title line, which names the press
    assert printed[0] == printed[1] and "per-frame budgets: [" in printed[0]
    budgets = [int(n) for n in printed[0].split("per-frame budgets: [")[1].split("]")[0].split(",")]
    assert len(set(budgets)) > 1  # not an even split
    assert main(["inspect", "--press", "uniform", "--frame-budgets", "vidcom2"]) == 2
    assert "UniformPress (uniform) does not take frame_budgets='vidcom2': it keeps whole" in one_line_error(capsys)


def test_fastv_on_the_demo_model_explains_its_layer_floor(capsys):
    assert main(["generate", "--model", "demo", "--press", "fastv", "--num-frames", "4"]) == 2
    err = one_line_error(capsys)
    assert "2 layers" in err and "--model vidpress/synthetic/reference_model (4 layers)" in err


def test_empty_policy_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["generate", "--press", "cacovid", "--policy", str(tmp_path)]) == 2
    assert "no CaCoVID policy there" in one_line_error(capsys)


def test_unavailable_device_is_a_one_line_error(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["generate", "--device", "cuda", "--num-frames", "4"]) == 2
    assert "--device cuda: CUDA is not available" in one_line_error(capsys)
    assert main(["eval", "--model", ".", "--bench", "mlvu", "--data", ".", "--device", "cuda:0"]) == 2
    assert "use --device cpu" in one_line_error(capsys)
    assert main(["bench", "--device", "gpu"]) == 2
    assert "is not a torch device" in one_line_error(capsys)


def test_train_without_the_train_extra_names_it(monkeypatch, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a))
    assert main(["train", "cgrpo", "--out", str(tmp_path)]) == 2
    assert 'needs trl from the [train] extra: pip install -c constraints.txt -e ".[train]"' in one_line_error(capsys)


def test_unexpected_errors_are_one_line_too(monkeypatch, capsys):
    import vidpress.cli.generate as generate

    def broken(args):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(generate, "run", broken)
    assert main(["generate"]) == 1
    assert "RuntimeError: something broke" in one_line_error(capsys)
    with pytest.raises(RuntimeError):  # -v shows the traceback
        main(["-v", "generate"])
    import vidpress.cli.train as train  # a missing optional import names its extra

    def missing(args):
        raise ModuleNotFoundError("No module named 'peft'", name="peft")

    monkeypatch.setattr(train, "_run_train_cgrpo", missing)
    assert main(["train", "cgrpo", "--out", "x"]) == 2
    assert 'needs the peft package: pip install -c constraints.txt -e ".[train]"' in one_line_error(capsys)


@pytest.mark.parametrize("argv, message", [
    (["generate", "--repeats", "0"], "--repeats must be a positive integer; got 0"),
    (["generate", "--max-new-tokens", "0"], "--max-new-tokens must be a positive integer; got 0"),
    (["profile", "--repeats", "0"], "--repeats must be a positive integer; got 0"),
    (["profile", "--press", "fastv", "--layers", "1"],
     "--press fastv drops tokens between LLM layers and does not fit this model's 1 layers"),
    (["inspect", "--out", "dir.mp4"], "--out dir.mp4: pass the path of a .png file"),
    (["inspect", "--num-frames", "0"], "--num-frames must be a positive integer; got 0"),
    (["train", "reference", "--train-examples", "0"], "--train-examples must be a positive integer; got 0"),
    (["train", "reference", "--batch-size", "0"], "--batch-size must be a positive integer; got 0"),
    (["train", "reference", "--stage2-steps", "-1"], "--stage2-steps must be an integer >= 0; got -1"),
    (["train", "reference", "--test-examples", "-1"], "--test-examples must be an integer >= 0; got -1"),
    (["train", "cacovid", "--train-examples", "0"], "--train-examples must be a positive integer; got 0"),
    (["train", "cacovid", "--rounds", "0"], "--rounds must be a positive integer; got 0"),
    (["train", "cacovid", "--val-examples", "-2"], "--val-examples must be an integer >= 0; got -2"),
    (["train", "cgrpo", "--steps", "0"], "--steps must be a positive integer; got 0"),
    (["train", "cgrpo", "--num-generations", "1"], "--num-generations must be an integer >= 2"),
])
def test_bad_options_are_one_line_errors_before_any_work(argv, message, capsys, monkeypatch, tmp_path):
    from vidpress import loading
    from vidpress.evaluation import checkpoints, testbed
    from vidpress.training import cacovid, reference

    def started(*args, **kwargs):
        pytest.fail("the command started its work before checking its options")

    for module, name in [(loading, "load_model"), (testbed, "load_bench_model"), (checkpoints, "build"),
                         (reference, "train_reference"), (cacovid, "train_cacovid")]:
        monkeypatch.setattr(module, name, started)
    if argv[0] == "train":
        argv = [*argv, "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert message in one_line_error(capsys)


def test_broken_files_are_named_in_one_line(tmp_path, capsys):
    import json
    import shutil

    from vidpress.evaluation.testbed import CACOVID_REFERENCE_DIR
    from vidpress.synthetic.reference import REFERENCE_DIR

    policy = shutil.copytree(CACOVID_REFERENCE_DIR, tmp_path / "policy")
    config = json.loads((policy / "cacovid_config.json").read_text())
    del config["hidden_size"]
    (policy / "cacovid_config.json").write_text(json.dumps(config))
    assert main(["generate", "--press", "cacovid", "--policy", str(policy), "--num-frames", "4"]) == 2
    assert f"{policy / 'cacovid_config.json'}: missing field(s) hidden_size" in one_line_error(capsys)

    model = shutil.copytree(REFERENCE_DIR, tmp_path / "model")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])
    assert main(["generate", "--model", str(model), "--num-frames", "4"]) == 2
    error = one_line_error(capsys)
    assert f"{weights}: cannot read the model weights" in error and "not a complete safetensors file" in error
