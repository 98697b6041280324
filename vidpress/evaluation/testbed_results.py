"""The files of a `vidpress bench` run: written row by row, resumable, and summarised at the end.

While it runs, `<out>/run.json` holds the settings (a resume with other settings is refused), `rows.jsonl` one line
per finished row and `predictions.jsonl` one line per example and row (example id, family, press, retention,
answer, correct, kept tokens, evidence). At the end: `results.json` (run metadata, the rows with their 95%
intervals, the paired tests), `results.csv`, `accuracy.png` and `pareto.png`.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path

from vidpress.evaluation.stats import mcnemar
from vidpress.evaluation.testbed import FULL
from vidpress.synthetic import known_families

RESULT_FILES = ("results.json", "results.csv", "accuracy.png", "pareto.png")
PROGRESS_FILES = ("run.json", "rows.jsonl", "predictions.jsonl")


def folder_digest(folder: Path) -> str:
    """sha256 over the names and bytes of the files in `folder` (a retrained model in the same folder differs)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def git_commit() -> str | None:
    """The commit of the vidpress source tree (with "+dirty" when it has uncommitted changes), None outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if commit else None


def run_metadata(model_dir: Path, split: str, examples: int, seed: int | None, device: str) -> dict:
    """What the run was: vidpress version and commit, library versions, the model folder and its hash, the split,
    the example count and subset seed, device and threads, the machine and the date. The load averages at start
    and end are added by the caller."""
    import torch
    import transformers

    import vidpress

    return {
        "vidpress": vidpress.__version__, "commit": git_commit(), "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "model": str(Path(model_dir).resolve()), "model_sha256": folder_digest(Path(model_dir)), "split": split,
        "examples": examples, "seed": seed, "device": device, "threads": torch.get_num_threads(),
        "cores": os.cpu_count(), "machine": platform.machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


class RunStore:
    """The progress files of one bench run in `out`: run.json (settings), rows.jsonl, predictions.jsonl.

    `open(settings, overwrite)` checks the folder: earlier final results are refused unless `overwrite`; a run
    of other settings is refused (naming the differences) unless `overwrite`; a run of the same settings is
    resumed (its finished rows are returned by `done()`). A row counts once its line is in rows.jsonl; its
    predictions are written before it, so a run killed between the two repeats that row only.
    """

    def __init__(self, out: Path):
        self.out = Path(out)
        self.settings_path = self.out / "run.json"
        self.rows_path = self.out / "rows.jsonl"
        self.predictions_path = self.out / "predictions.jsonl"

    def open(self, settings: dict, overwrite: bool = False) -> dict:
        """Check or start the run in `out` and return the rows already done {(press, retention): (row, records)}."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file; pass a folder for {', '.join(RESULT_FILES)}")
        if not overwrite:
            earlier = [name for name in RESULT_FILES if (out / name).exists()]
            if earlier:
                raise ValueError(f"--out {out} already holds results ({', '.join(earlier)}); pass another --out, "
                                 "or --overwrite to replace them")
            if self.settings_path.exists():
                previous = json.loads(self.settings_path.read_text())
                differ = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
                if differ:
                    changes = "; ".join(f"{k}: {previous.get(k)!r} -> {settings.get(k)!r}" for k in differ)
                    raise ValueError(f"--out {out} holds an unfinished bench run with other settings ({changes}); "
                                     "pass another --out, the same settings to resume it, or --overwrite to "
                                     "discard it")
                return self._load()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"--out {out}: cannot create the folder ({error.strerror})") from None
        if not os.access(out, os.W_OK):
            raise ValueError(f"--out {out}: the folder is not writable")
        for name in RESULT_FILES + PROGRESS_FILES:
            (out / name).unlink(missing_ok=True)
        _write_atomic(self.settings_path, json.dumps(settings, indent=1))
        return {}

    def _load(self) -> dict:
        rows = _read_jsonl(self.rows_path)
        keys = {(r["press"], r["retention"]) for r in rows}
        records: dict = {}
        for record in _read_jsonl(self.predictions_path):
            key = (record["press"], record["retention"])
            if key in keys:
                records.setdefault(key, []).append(record)
        # Keep only whole rows: rewrite both files so a row cut short by a kill is run again from scratch.
        done = {(r["press"], r["retention"]): (r, records.get((r["press"], r["retention"]), [])) for r in rows}
        done = {key: value for key, value in done.items() if len(value[1]) == value[0]["examples"]}
        _write_atomic(self.rows_path, "".join(json.dumps(row) + "\n" for row, _ in done.values()))
        _write_atomic(self.predictions_path,
                      "".join(json.dumps(r) + "\n" for _, records in done.values() for r in records))
        return done

    def done_keys(self) -> list[tuple[str, float]]:
        """(press, retention) of the rows recorded so far."""
        return [(r["press"], r["retention"]) for r in _read_jsonl(self.rows_path)]

    def append(self, row: dict, records: list[dict]) -> None:
        """Record one finished row: its predictions first, then the row (what marks it done)."""
        _append(self.predictions_path, "".join(json.dumps(r) + "\n" for r in records))
        _append(self.rows_path, json.dumps(row) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: its row is run again
            continue
    return out


def _append(path: Path, text: str) -> None:
    with path.open("a") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def paired_tests(results: dict) -> list[dict]:
    """Exact McNemar tests on per-example correctness: every row against the full-token row, and every two presses
    at the same requested retention. results: {(press, retention): (row, records)} as `run_grid` returns."""
    def correct(key):
        return [r["correct"] for r in results[key][1]]

    def label(key):
        return f"{key[0]}@{key[1]:g}"

    keys = [k for k in results if k[0] != FULL]
    full = next(k for k in results if k[0] == FULL)
    for key in keys:
        if [r["example"] for r in results[key][1]] != [r["example"] for r in results[full][1]]:
            raise ValueError(f"row {label(key)} holds other examples than the full-token row; cannot pair them")
    tests = [{"kind": "vs_full", **mcnemar(correct(k), correct(full), (label(k), FULL)).to_json()} for k in keys]
    for retention in dict.fromkeys(k[1] for k in keys):
        same = [k for k in keys if k[1] == retention]
        for i, a in enumerate(same):
            for b in same[i + 1 :]:
                test = mcnemar(correct(a), correct(b), (label(a), label(b)))
                tests.append({"kind": "same_retention", **test.to_json()})
    return tests


def attach_tests(rows: list[dict], tests: list[dict]) -> list[dict]:
    """Copy each row's test against the full-token row into the row (`p_vs_full`, `only_press`, `only_full`)."""
    vs_full = {t["a"]: t for t in tests if t["kind"] == "vs_full"}
    for row in rows:
        test = vs_full.get(f"{row['press']}@{row['retention']:g}")
        if test is not None:
            row["p_vs_full"], row["only_press"], row["only_full"] = test["p_value"], test["only_a"], test["only_b"]
    return rows


FAMILY_SHORT = {"brief_event": "brief", "static": "static", "small_detail": "detail", "order": "order",
                "counting": "count", "query": "query"}


def format_table(rows: list[dict]) -> str:
    """A plain-text table of the rows, one line per (press, retention): accuracy with its 95% interval, the exact
    McNemar p-value against the full-token row, per-family accuracy, kept tokens, median prefill and peak memory.
    A row at its press's floor is marked '=' (same answers as that press's first row at its floor)."""
    families = [f for f in known_families() if any(f in r["accuracy_by_family"] for r in rows)]
    header = ["press", "R", "eff R", "recall", "acc", "95% CI", "% full", "p vs none"]
    header += [FAMILY_SHORT.get(f, f) for f in families] + ["tokens", "prefill ms", "peak MB"]
    lines = [header]
    floors_seen = set()
    for r in rows:
        peak = "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.1f}"
        mark = ""
        if r.get("at_floor"):
            mark = "=" if r["press"] in floors_seen else ""
            floors_seen.add(r["press"])
        low, high = r["accuracy_ci"]
        p = r.get("p_vs_full")
        lines.append(
            [r["press"], f"{r['retention']:.2f}", f"{r['effective_retention']:.3f}{mark}",
             f"{r['evidence_recall']:.3f}", f"{r['accuracy']:.3f}", f"{low:.3f}-{high:.3f}",
             f"{100 * r['relative_accuracy']:.1f}", "-" if p is None else _p(p)]
            + [f"{r['accuracy_by_family'].get(f, float('nan')):.2f}" for f in families]
            + [f"{r['visual_tokens']:.1f}", f"{r['prefill_ms']:.2f}", peak]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    table = "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines)
    counts = sorted(set(rows[0].get("examples_by_family", {}).values()))
    per_family = "-".join(str(c) for c in (counts[:1] + counts[-1:] if len(counts) > 1 else counts))
    notes = [f"{rows[0]['examples']} examples ({per_family} per family): acc 95% CI = Wilson interval; "
             "p vs none = exact McNemar test on the same examples; per-family intervals in results.json / .csv"]
    if floors_seen:
        notes.append("'=' after eff R: the press is at its floor there (it cannot keep fewer tokens on this model), "
                     "so the row repeats its first row at the floor")
    return table + "\n" + "\n".join(notes)


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def write_results(rows: list[dict], out_dir, run: dict | None = None, tests: list[dict] | None = None) -> dict:
    """Write results.json ({"run", "rows", "paired_tests"}), results.csv (families and intervals as columns),
    accuracy.png and pareto.png; return their paths."""
    from vidpress.evaluation.testbed_plots import plot_accuracy, plot_pareto

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = dict(zip(("json", "csv", "plot", "pareto"), (out / name for name in RESULT_FILES)))
    _write_atomic(paths["json"], json.dumps({"run": run or {}, "rows": rows, "paired_tests": tests or []}, indent=2))
    families = [f for f in known_families() if any(f in r["accuracy_by_family"] for r in rows)]
    nested = ("accuracy_by_family", "accuracy_by_family_ci", "examples_by_family")
    scalar = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in nested]
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(_csv_header(scalar) + [f"accuracy_{f}" for f in families]
                        + [f"accuracy_{f}_ci_{side}" for f in families for side in ("low", "high")])
        for r in rows:
            cells = []
            for k in scalar:
                value = r.get(k)
                cells += list(value) if isinstance(value, list) else [value]
            cells += [r["accuracy_by_family"].get(f) for f in families]
            cells += [r.get("accuracy_by_family_ci", {}).get(f, [None, None])[i] for f in families for i in (0, 1)]
            writer.writerow(cells)
    plot_accuracy(rows, paths["plot"])
    plot_pareto(rows, paths["pareto"])
    return paths


def _csv_header(scalar: list[str]) -> list[str]:
    names = []
    for k in scalar:
        if k.endswith("_ci"):
            names += [f"{k}_low", f"{k}_high"]
        elif k.endswith("_spread"):
            names += [f"{k[: -len('_spread')]}_q1", f"{k[: -len('_spread')]}_q3"]
        else:
            names.append(k)
    return names
