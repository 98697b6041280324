"""docs/claims.md (and docs/streaming.md's stream-profile section) are what scripts/claims.py makes from the results
files: typing into them fails the check; missing inputs give "not measured yet" rows, not an error."""

import importlib.util
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).parents[1]
spec = importlib.util.spec_from_file_location("claims_script", ROOT / "scripts" / "claims.py")
claims = importlib.util.module_from_spec(spec)
spec.loader.exec_module(claims)


def test_the_claims_page_and_the_stream_section_are_what_the_script_makes_now(capsys):
    assert claims.main(["--check"]) == 0, capsys.readouterr().err


def test_a_number_typed_into_the_page_fails_the_check(tmp_path, capsys):
    page, streaming = tmp_path / "claims.md", tmp_path / "streaming.md"
    shutil.copy(claims.CLAIMS, page)
    shutil.copy(claims.STREAMING, streaming)
    assert claims.main(["--check", "--out", str(page), "--streaming", str(streaming)]) == 0
    page.write_text(page.read_text().replace("| seed |", "| seed (99.9% of full) |"))
    assert claims.main(["--check", "--out", str(page), "--streaming", str(streaming)]) == 1
    assert "claims.md is not what the results files give" in capsys.readouterr().err


def bench_results(rows: list[tuple[str, float, float]]) -> dict:
    """A results.json of `vidpress bench` with rows (press, retention, accuracy) on 240 examples."""
    return {"run": {"examples": 240, "split": "test"}, "rows": [
        {"press": press, "retention": retention, "effective_retention": retention, "accuracy": accuracy,
         "accuracy_ci": [accuracy - 0.05, accuracy + 0.05], "examples": 240} for press, retention, accuracy in rows]}


def test_missing_inputs_are_not_measured_yet_and_present_ones_are_read(tmp_path):
    page, streaming, profiles = tmp_path / "claims.md", tmp_path / "streaming.md", tmp_path / "profiles"
    profiles.mkdir()
    streaming.write_text("# Streaming\n")
    argv = ["--out", str(page), "--streaming", str(streaming), "--profiles", str(profiles),
            "--bench", str(tmp_path / "none.json"), "--long-bench", str(tmp_path / "none.json")]
    assert claims.main(argv) == 0
    text = page.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "arXiv" in line]
    assert len(rows) == 10 and all("not measured yet" in row for row in rows)
    assert "not measured yet: run `vidpress profile --config qwen2.5-vl-7b --layers 2" in streaming.read_text()

    bench, long_bench = tmp_path / "bench.json", tmp_path / "long.json"
    bench.write_text(json.dumps(bench_results([("none", 1.0, 0.8), ("vidcom2", 0.25, 0.7), ("marc", 0.125, 0.4)])))
    long_bench.write_text(json.dumps(bench_results([("none", 1.0, 0.9), ("marc", 0.05, 0.6), ("marc", 0.1, 0.8)])))
    argv[-3:] = [str(bench), "--long-bench", str(long_bench)]
    assert claims.main(argv) == 0
    text = page.read_text()
    assert "**87.5%** of full (accuracy 0.700 [0.650, 0.750] vs 0.800" in text  # vidcom2 at 0.25: 0.7 / 0.8
    assert "**50.0%** of full" in text  # marc at 0.125 on the testbed
    assert "**66.7%** of full (accuracy 0.600" in text  # the long family's lowest marc budget: 0.6 / 0.9
    assert "not measured yet (no marc-cgrpo row at R=0.125)" in text and "no cacovid row" in text
    assert "vidpress bench --presses vidcom2,marc --retentions 0.25,0.125 --out DIR" in text
    assert claims.main([*argv, "--check"]) == 0

    long_bench.write_text(json.dumps(bench_results([("none", 1.0, 0.9), ("marc", 0.05, 0.6),
                                                    ("marc-vmr-cgrpo", 0.05, 0.45)])))
    assert claims.main(argv) == 0
    text = page.read_text()
    assert "**50.0%** of full (accuracy 0.450" in text and "no marc-vmr row" in text  # the long family's student
    # a long-family bench is named as one: recorded in its run, or told by its rows' families
    rows = bench_results([("none", 1.0, 0.9), ("marc", 0.05, 0.6)])
    for row in rows["rows"]:
        row["accuracy_by_family"] = {"long": row["accuracy"]}
    long_bench.write_text(json.dumps(rows))
    assert claims.main(argv) == 0
    assert "vidpress bench --presses marc --retentions 0.05 --family long --out DIR" in page.read_text()
