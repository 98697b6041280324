"""`vidpress bench --family long`: its rows, its defaults and its bad input."""

import json

import pytest

from vidpress.cli import main
from vidpress.evaluation import testbed


def test_long_family_rows_are_its_own():
    long_names, six_names = testbed.default_names("long"), testbed.default_names()
    # the six families' students (rows with their own model) run with them only; presses with a policy for the
    # bench model run on both
    students = {name for name, row in testbed.BENCH_ROWS.items() if row.model is not None and row.family is None}
    assert students and students <= set(six_names) and not students & set(long_names)
    # rows made for the long family (marc-vmr: a dual encoder trained on it; marc-vmr-cgrpo: and a student trained
    # on it) run with it only
    made_for_long = {name for name, row in testbed.BENCH_ROWS.items() if row.family == "long"}
    assert made_for_long and made_for_long <= set(long_names) and not made_for_long & set(six_names)
    assert set(testbed.checkpoint_free_names()) <= set(long_names) and set(long_names) - made_for_long < set(six_names)


def test_bench_family_refuses_the_full_grid(capsys, tmp_path):
    assert main(["bench", "--family", "long", "--full", "--out", str(tmp_path)]) == 2
    assert "--full" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_family_long_runs(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--family", "long", "--presses", "marc,marc-vmr,random", "--retentions", "0.015625",
                 "--limit", "4", "--workers", "1", "--quiet", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = {row["press"]: row for row in results["rows"]}
    assert set(rows) == {"none", "marc", "marc-vmr", "random"}
    assert all(set(row["accuracy_by_family"]) == {"long"} for row in rows.values())
    # one frame's budget: MarcPress keeps about 4 tokens (one 2x2 frame) of 128-512
    assert rows["marc"]["visual_tokens"] <= 8 and rows["none"]["visual_tokens"] >= 128
    assert rows["marc-vmr"]["visual_tokens"] <= 8 and rows["marc-vmr"]["effective_retention"] < 0.02
