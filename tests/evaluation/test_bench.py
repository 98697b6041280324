"""`vidpress bench` and `vidpress inspect` end to end with the shipped reference model (a few examples)."""

import csv
import json

import pytest

from vidpress.cli import main
from vidpress.evaluation.testbed import format_table, run_bench, write_results
from vidpress.synthetic import QUESTION_FAMILIES, make_split
from vidpress.synthetic.reference import load_reference

KEYS = {"press", "retention", "effective_retention", "evidence_recall", "accuracy", "relative_accuracy",
        "accuracy_by_family", "visual_tokens", "prefill_ms", "peak_mem_mb"}


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
    full, vidcom2, random, fastv = rows
    assert full["evidence_recall"] == 1.0 and full["effective_retention"] == 1.0 and full["visual_tokens"] == 128
    assert random["effective_retention"] == 0.25 and random["visual_tokens"] == 32
    assert abs(vidcom2["effective_retention"] - 0.25) < 0.05
    assert fastv["effective_retention"] == pytest.approx(0.5, abs=0.01)  # K=2 of 4 layers see every token: the floor
    paths = write_results(rows, tmp_path)
    assert json.loads(paths["json"].read_text()) == rows
    with paths["csv"].open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 4 and "accuracy_query" in table[0]
    assert paths["plot"].stat().st_size > 10_000
    assert "vidcom2" in format_table(rows)


def test_bench_command(tmp_path, capsys):
    code = main(["bench", "--presses", "uniform", "--retentions", "0.5", "--limit", "6", "--out", str(tmp_path),
                 "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "uniform" in out and (tmp_path / "results.json").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--presses", "nope"], "unknown press 'nope'"),
        (["bench", "--retentions", "0.25,2"], "retention"),
        (["bench", "--limit", "0"], "--limit"),
    ],
)
def test_bench_bad_input(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


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
    import vidpress.evaluation.testbed as bench

    (tmp_path / "results.json").write_text("[]")
    monkeypatch.setattr(bench, "load_bench_model", lambda *a: pytest.fail("the run started"))
    assert main(["bench", "--limit", "6", "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already holds results (results.json)" in err and "--overwrite" in err
    (tmp_path / "file").write_text("")
    assert main(["bench", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["bench", "--presses", "uniform", "--retentions", "0.5", "--limit", "6", "--out", str(tmp_path),
                 "--quiet", "--overwrite"]) == 0
    assert len(json.loads((tmp_path / "results.json").read_text())) == 2


def test_accuracy_plot_styles_and_legend_outside_the_data():
    from vidpress.evaluation.testbed import FULL, bench_names, figure

    names = bench_names()
    rows = [{"press": FULL, "retention": 1.0, "effective_retention": 1.0, "accuracy": 0.9, "evidence_recall": 1.0,
             "examples": 6}]
    rows += [{"press": name, "retention": r, "effective_retention": r, "accuracy": 0.5, "evidence_recall": 0.5}
             for name in names for r in (0.1, 0.5)]
    fig = figure(rows)
    for ax in fig.axes:
        lines = [line for line in ax.get_lines() if line.get_label() in names]
        assert [line.get_label() for line in lines] == names
        styles = {(line.get_color() if isinstance(line.get_color(), str) else tuple(line.get_color()),
                   line.get_marker()) for line in lines}
        assert len({s[0] for s in styles}) == len(names) and len({s[1] for s in styles}) == len(names)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    assert [t.get_text() for t in legend.get_texts()] == [*names, "all tokens"]
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent(renderer))
