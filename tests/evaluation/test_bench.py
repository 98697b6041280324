"""`vidpress bench` and `vidpress inspect` end to end with the shipped reference model (a few examples)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vidpress.cli import main
from vidpress.evaluation.testbed import FULL, QUICK_PER_FAMILY, quick_indices, run_bench
from vidpress.evaluation.testbed_results import format_table, write_results
from vidpress.synthetic import QUESTION_FAMILIES, make_split
from vidpress.synthetic.reference import load_reference

KEYS = {"press", "retention", "effective_retention", "evidence_recall", "accuracy", "relative_accuracy",
        "accuracy_by_family", "visual_tokens", "prefill_ms", "peak_mem_mb", "accuracy_ci", "accuracy_by_family_ci",
        "evidence_recall_ci", "prefill_ms_spread", "press_ms", "flops", "floor", "at_floor", "examples"}
#: Row fields that depend on the machine, not on the answers.
TIMING = {"prefill_ms", "prefill_ms_spread", "press_ms", "press_ms_spread", "peak_mem_mb"}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reference():
    return load_reference()


@pytest.mark.slow
def test_run_bench_rows(reference, tmp_path):
    model, processor = reference
    examples = make_split("test", 12)
    rows = run_bench(model, processor, examples, ["vidcom2", "random", "fastv"], [0.25], batch_size=6, progress=False)
    assert [(r["press"], r["retention"]) for r in rows] == [("none", 1.0), ("vidcom2", 0.25), ("random", 0.25),
                                                            ("fastv", 0.25)]
    for row in rows:
        assert KEYS <= set(row)
        assert set(row["accuracy_by_family"]) == set(QUESTION_FAMILIES)
        assert row["relative_accuracy"] == pytest.approx(row["accuracy"] / rows[0]["accuracy"])
        low, high = row["accuracy_ci"]
        assert low <= row["accuracy"] <= high and row["flops"] > 0
    full, vidcom2, random, fastv = rows
    assert full["evidence_recall"] == 1.0 and full["effective_retention"] == 1.0 and full["visual_tokens"] == 128
    assert random["effective_retention"] == 0.25 and random["visual_tokens"] == 32
    assert abs(vidcom2["effective_retention"] - 0.25) < 0.05
    assert fastv["effective_retention"] == pytest.approx(0.5, abs=0.01)  # K=2 of 4 layers see every token: the floor
    assert fastv["at_floor"] and fastv["floor"] == 0.5 and not random["at_floor"]
    assert random["flops"] < full["flops"]
    paths = write_results(rows, tmp_path, {"seed": 0}, [])
    assert json.loads(paths["json"].read_text()) == {"run": {"seed": 0}, "rows": rows, "paired_tests": []}
    with paths["csv"].open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 4 and "accuracy_query" in table[0] and "accuracy_ci_low" in table[0]
    assert paths["plot"].stat().st_size > 10_000 and paths["pareto"].stat().st_size > 10_000
    assert "vidcom2" in format_table(rows)


def test_rows_at_the_floor_run_once_and_equal_a_run_of_their_own(reference):
    """fastv's floor on the 4-layer reference model is 0.5: 0.25 runs, 0.1 copies it; both equal a lone run."""
    from vidpress.evaluation.testbed import run_grid

    model, processor = reference
    examples = make_split("test", 4)
    calls = []
    grid = run_grid(model, processor, examples, ["fastv"], [0.25, 0.1], batch_size=4, progress=False,
                    on_row=lambda row, records: calls.append(row["press"]))
    alone = run_grid(model, processor, examples, ["fastv"], [0.1], batch_size=4, progress=False)
    copied, own = grid[("fastv", 0.1)], alone[("fastv", 0.1)]
    assert copied[0]["at_floor"] and grid[("fastv", 0.25)][0]["at_floor"]
    assert [{k: r[k] for k in r if k != "retention"} for r in copied[1]] == \
        [{k: r[k] for k in r if k != "retention"} for r in grid[("fastv", 0.25)][1]]
    assert [(r["answer"], r["kept_tokens"]) for r in copied[1]] == [(r["answer"], r["kept_tokens"]) for r in own[1]]
    assert calls == [FULL, "fastv", "fastv"]
    # two rows copying one (each copy is finished once, also when the first copy's finish reaches the second)
    three = run_grid(model, processor, examples, ["fastv"], [0.25, 0.15, 0.1], batch_size=4, progress=False)
    assert [three[("fastv", r)][0]["accuracy"] for r in (0.25, 0.15, 0.1)] == [copied[0]["accuracy"]] * 3


def test_bench_command(tmp_path, capsys):
    code = main(["bench", "--presses", "uniform", "--retentions", "0.5", "--limit", "6", "--out", str(tmp_path),
                 "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "uniform" in out and "95% CI" in out and "p vs none" in out
    result = json.loads((tmp_path / "results.json").read_text())
    run = result["run"]
    for key in ("vidpress", "commit", "torch", "transformers", "model", "model_sha256", "split", "seed", "threads",
                "load_average_start", "load_average_end", "date"):
        assert key in run
    assert run["split"] == "test" and len(run["model_sha256"]) == 64 and run["threads"] == 1
    assert [t["kind"] for t in result["paired_tests"]] == ["vs_full"]
    lines = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and {"example", "family", "press", "retention", "answer", "correct",
                                 "kept_tokens"} <= set(lines[0])
    assert {(p["press"], p["retention"]) for p in lines} == {("none", 1.0), ("uniform", 0.5)}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--presses", "nope"], "unknown press 'nope'"),
        (["bench", "--presses", ""], "names no press"),
        (["bench", "--presses", " , "], "names no press"),
        (["bench", "--presses", "random,random"], "repeats a press"),
        (["bench", "--retentions", ""], "names no retention"),
        (["bench", "--retentions", "0.25,2"], "retention"),
        (["bench", "--retentions", "0,abc"], "retention"),
        (["bench", "--retentions", "0.5,abc"], "'abc' is not a number"),
        (["bench", "--limit", "0"], "--limit"),
        (["bench", "--batch-size", "0"], "--batch-size must be a positive integer"),
        (["bench", "--threads", "0"], "--threads must be a positive integer"),
        (["bench", "--workers", "0"], "--workers must be a positive integer"),
        (["bench", "--threads", "2", "--workers", "2"], "needs --workers 1"),
        (["bench", "--model", "/no/such/folder"], "no such model folder"),
    ],
)
def test_bench_bad_input_is_refused_before_any_work(argv, message, capsys, monkeypatch):
    import vidpress.evaluation.testbed as testbed

    monkeypatch.setattr(testbed, "load_bench_model", lambda *a: pytest.fail("the run started"))
    started = time.perf_counter()
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert time.perf_counter() - started < 5


def test_quick_subset_is_stratified_and_fixed_by_the_seed():
    indices = quick_indices()
    assert indices == quick_indices() and indices == sorted(set(indices))
    assert len(indices) == QUICK_PER_FAMILY * len(QUESTION_FAMILIES) and max(indices) < 600
    families = [QUESTION_FAMILIES[i % len(QUESTION_FAMILIES)] for i in indices]
    assert all(families.count(f) == QUICK_PER_FAMILY for f in QUESTION_FAMILIES)
    assert [e.family for e in make_split("test", 1, start=indices[3])] == [families[3]]
    assert quick_indices(seed=1) != indices
    with pytest.raises(ValueError, match="per_family"):
        quick_indices(per_family=101)


def test_inspect_draws_the_kept_tokens(tmp_path, capsys):
    path = tmp_path / "kept.png"
    assert main(["inspect", "--num-frames", "8", "--retention", "0.25", "--out", str(path)]) == 0
    assert path.stat().st_size > 10_000
    assert "per-frame budgets" in capsys.readouterr().out


def test_bench_on_another_model_skips_the_reference_checkpoints_by_default():
    from vidpress.evaluation.testbed import BENCH_ROWS, bench_names, checkpoint_free_names

    names = checkpoint_free_names()
    assert "cacovid" in bench_names() and "marc-cgrpo" in bench_names()
    assert not set(BENCH_ROWS) & set(names) and "vidcom2" in names and "marc" in names


def test_bench_out_is_checked_before_the_run_and_never_overwritten_silently(tmp_path, capsys, monkeypatch):
    import vidpress.evaluation.testbed as testbed

    (tmp_path / "results.json").write_text("[]")
    monkeypatch.setattr(testbed, "load_bench_model", lambda *a: pytest.fail("the run started"))
    assert main(["bench", "--limit", "6", "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already holds results (results.json)" in err and "--overwrite" in err
    (tmp_path / "file").write_text("")
    assert main(["bench", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["bench", "--presses", "uniform", "--retentions", "0.5", "--limit", "6", "--out", str(tmp_path),
                 "--quiet", "--overwrite"]) == 0
    assert len(json.loads((tmp_path / "results.json").read_text())["rows"]) == 2


def answers(out: Path) -> list[dict]:
    """The rows of a finished run without the machine-dependent fields."""
    rows = json.loads((out / "results.json").read_text())["rows"]
    return [{k: v for k, v in row.items() if k not in TIMING | {"flops"}} for row in rows]


BENCH = ["bench", "--presses", "uniform,random", "--retentions", "0.5,0.25", "--limit", "6", "--batch-size", "3",
         "--quiet"]


def test_ctrl_c_keeps_the_finished_rows_and_the_same_command_resumes(tmp_path, capsys, monkeypatch):
    """Interrupted after two rows (two workers), resumed: the same answers as one uninterrupted worker."""
    from vidpress.evaluation.testbed_results import RunStore

    assert main([*BENCH, "--workers", "1", "--out", str(tmp_path / "whole")]) == 0  # the others: 2 forked workers
    append = RunStore.append

    def interrupt_after_two(self, row, records):
        append(self, row, records)
        if len(self.done_keys()) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunStore, "append", interrupt_after_two)
    capsys.readouterr()
    assert main([*BENCH, "--out", str(tmp_path / "cut")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"interrupted: 2 of 5 rows kept in {tmp_path / 'cut'}; run the same command to resume"
    assert "Traceback" not in "\n".join(err)
    monkeypatch.undo()
    assert main([*BENCH[:-1], "--retentions", "0.5", "--quiet", "--out", str(tmp_path / "cut")]) == 2
    assert "other settings (retentions: [0.5, 0.25] -> [0.5])" in capsys.readouterr().err
    assert main([*BENCH, "--out", str(tmp_path / "cut")]) == 0
    assert "resuming after 2 finished rows" in capsys.readouterr().out
    assert answers(tmp_path / "cut") == answers(tmp_path / "whole")
    lines = (tmp_path / "cut" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 5 * 6


@pytest.mark.slow
def test_a_killed_bench_process_resumes_to_the_same_table(tmp_path):
    """Kill the real process (SIGKILL, no clean-up at all) after its second row; the same command finishes it."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    command = [sys.executable, "-m", "vidpress", *BENCH]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([*command, "--out", str(whole)], check=True, cwd=ROOT, env=env, capture_output=True)
    process = subprocess.Popen([*command, "--out", str(cut)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        rows = cut / "rows.jsonl"
        if rows.exists() and len(rows.read_text().splitlines()) >= 2:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (cut / "results.json").exists()
    result = subprocess.run([*command, "--out", str(cut)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming after" in result.stdout
    assert answers(cut) == answers(whole)


def test_accuracy_plot_styles_and_legend_outside_the_data():
    from vidpress.evaluation.testbed import default_names
    from vidpress.evaluation.testbed_plots import figure, press_styles

    names = default_names()  # every row of the default run (the "+fca" rows come on request)
    rows = [{"press": FULL, "retention": 1.0, "effective_retention": 1.0, "accuracy": 0.9, "evidence_recall": 1.0,
             "examples": 6, "accuracy_ci": [0.8, 0.95]}]
    rows += [{"press": name, "retention": r, "effective_retention": r, "accuracy": 0.5, "evidence_recall": 0.5,
              "accuracy_ci": [0.4, 0.6]} for name in names for r in (0.1, 0.5)]
    fig = figure(rows)
    for ax in fig.axes:
        # one errorbar container per press (its data line first)
        containers = [c for c in ax.containers if c.get_label() in names]
        assert [c.get_label() for c in containers] == names
        lines = [c.lines[0] for c in containers]
        styles = {(line.get_color() if isinstance(line.get_color(), str) else tuple(line.get_color()),
                   line.get_marker(), line.get_linestyle()) for line in lines}
        assert len({s[0] for s in styles}) == len(names) and len({s[1:] for s in styles}) == len(names)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    assert [t.get_text() for t in legend.get_texts()] == [*names, "all tokens", "chance (0.25)"]
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent(renderer))
    # 12+ presses (more are coming): up to 20 every press has its own colour and its own (marker, line style) pair
    many = press_styles([f"press{i}" for i in range(20)])
    assert len({s["color"] for s in many.values()}) == 20
    assert len({(s["marker"], s["linestyle"]) for s in many.values()}) == 20


def test_a_press_at_its_floor_is_drawn_once_with_a_ring():
    from vidpress.evaluation.testbed_plots import drawn_rows, figure, pareto_front

    rows = [{"press": FULL, "retention": 1.0, "effective_retention": 1.0, "accuracy": 0.9, "evidence_recall": 1.0,
             "examples": 6}]
    rows += [{"press": "fastv", "retention": r, "effective_retention": 0.5, "accuracy": 0.7, "evidence_recall": 0.5,
              "at_floor": r < 0.5} for r in (0.5, 0.25, 0.1)]
    assert [r["retention"] for r in drawn_rows(rows)] == [1.0, 0.5, 0.25]
    fig = figure(rows)
    rings = [line for line in fig.axes[0].get_lines() if line.get_label().startswith("at the press's floor")]
    assert len(rings) == 1
    assert pareto_front([(1, 0.5), (2, 0.4), (2, 0.7), (3, 0.7), (4, 0.9)]) == [(1, 0.5), (2, 0.7), (4, 0.9)]
