"""Print a `vidpress bench` results.json as the markdown table of docs/benchmarks.md (so the table is generated, not
typed): accuracy with its 95% interval, the exact McNemar p against all tokens, the query family, prefill and FLOPs.

    python scripts/bench_table.py bench-results/results.json [--no-timing]

`--no-timing` leaves the prefill column out (for runs on a busy machine, where it is noise).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def p_text(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def table(results: dict, timing: bool = True) -> str:
    rows = results["rows"]
    full = next(r for r in rows if r["press"] == "none")
    p_vs_full = {t["a"]: t["p_value"] for t in results["paired_tests"] if t["kind"] == "vs_full"}
    head = ["press", "R", "eff. R", "evidence recall", "accuracy [95% CI]", "% of full", "p vs none (McNemar)",
            "query family [95% CI]"] + (["prefill ms / example (median)"] if timing else []) + ["GFLOPs / example"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        low, high = r["accuracy_ci"]
        q_low, q_high = r["accuracy_by_family_ci"]["query"]
        floor = " =" if r["at_floor"] else ""
        cells = [r["press"], f"{r['retention']:.2f}", f"{r['effective_retention']:.3f}{floor}",
                 f"{r['evidence_recall']:.3f}", f"{r['accuracy']:.3f} [{low:.3f}, {high:.3f}]",
                 f"{100 * r['accuracy'] / full['accuracy']:.1f}",
                 "-" if r["press"] == "none" else p_text(p_vs_full.get(f"{r['press']}@{r['retention']:g}")),
                 f"{r['accuracy_by_family']['query']:.2f} [{q_low:.2f}, {q_high:.2f}]"]
        if timing:
            cells.append(f"{r['prefill_ms']:.1f}")
        cells.append(f"{r['flops'] / 1e9:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a results.json written by `vidpress bench`")
    parser.add_argument("--no-timing", action="store_true", help="leave the prefill column out")
    args = parser.parse_args()
    print(table(json.loads(Path(args.results).read_text()), timing=not args.no_timing))


if __name__ == "__main__":
    main()
