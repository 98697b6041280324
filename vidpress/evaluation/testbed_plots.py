"""The plots of `vidpress bench`: accuracy / evidence recall against effective retention (with 95% intervals), and
the speed/accuracy (Pareto) view, accuracy against LLM prefill time and FLOPs per example.

Every press keeps one style (colour + marker + line style) in both figures; a press asked for less than its floor
is drawn once at that floor, with a ring saying so.
"""

from __future__ import annotations

from vidpress.evaluation.testbed import FULL
from vidpress.synthetic.world import LETTERS

#: Accuracy of guessing among the answer options.
CHANCE = 1 / len(LETTERS)
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", "h", ">", "p", "d")
_LINESTYLES = ("-", "--", "-.", ":")


def press_styles(names: list[str]) -> dict[str, dict]:
    """Matplotlib styles {press: {"color", "marker", "linestyle"}}: 20 distinct colours (tab20, its dark shades
    first), 13 markers and 4 line styles cycling independently, so every press up to 20 has its own colour and
    even printed in grey any two presses up to 52 differ in marker or line style."""
    import matplotlib

    palette = matplotlib.colormaps["tab20"].colors
    order = [*range(0, 20, 2), *range(1, 20, 2)]  # 10 dark shades, then the 10 light ones
    return {name: {"color": palette[order[i % 20]], "marker": _MARKERS[i % len(_MARKERS)],
                   "linestyle": _LINESTYLES[i % len(_LINESTYLES)]}
            for i, name in enumerate(names)}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def drawn_rows(rows: list[dict]) -> list[dict]:
    """The rows a plot draws: every row but the copies at a press's floor (each press's floor is drawn once)."""
    seen, out = set(), []
    for row in rows:
        if row.get("at_floor"):
            if row["press"] in seen:
                continue
            seen.add(row["press"])
        out.append(row)
    return out


def figure(rows: list[dict]):
    """Accuracy and evidence recall against effective retention: one line per press with 95% intervals, the full
    model dashed with its interval shaded, chance dotted, presses at their floor ringed once, one legend to the
    right of both plots (never over the data)."""
    plt = _pyplot()
    full = next(r for r in rows if r["press"] == FULL)
    names = list(dict.fromkeys(r["press"] for r in rows if r["press"] != FULL))
    styles = press_styles(names)
    drawn = drawn_rows(rows)
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.6), layout="constrained")
    for ax, key, label in ((axes[0], "accuracy", "accuracy"), (axes[1], "evidence_recall", "evidence recall")):
        floor_label = "at the press's floor (lower R asked, same tokens)"
        for name in names:
            points = sorted((r["effective_retention"], r[key], r.get(f"{key}_ci"), r.get("at_floor"))
                            for r in drawn if r["press"] == name)
            x, y = [p[0] for p in points], [p[1] for p in points]
            errors = None
            if all(p[2] for p in points):
                errors = [[p[1] - p[2][0] for p in points], [p[2][1] - p[1] for p in points]]
            ax.errorbar(x, y, yerr=errors, label=name, markersize=5, linewidth=1.2, elinewidth=0.7, capsize=2,
                        **styles[name])
            for p in points:
                if p[3]:
                    ax.plot([p[0]], [p[1]], marker="o", markersize=11, markerfacecolor="none",
                            markeredgecolor="black", linestyle="none", label=floor_label)
                    floor_label = "_nolegend_"
        ax.axhline(full[key], color="black", linestyle="--", linewidth=1, label="all tokens")
        if full.get(f"{key}_ci"):
            ax.axhspan(*full[f"{key}_ci"], color="black", alpha=0.07, linewidth=0)
        if key == "accuracy":
            ax.axhline(CHANCE, color="grey", linestyle=":", linewidth=1, label=f"chance ({CHANCE:g})")
        ax.set_xscale("log")
        ticks = [0.05, 0.1, 0.15, 0.25, 0.5, 1.0]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("effective retention (kept / all visual tokens)")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"accuracy, 95% intervals ({full['examples']} test examples)")
    axes[1].set_title("evidence recall (model-free)")
    handles, labels = _presses_first(*axes[0].get_legend_handles_labels(), names)
    fig.legend(handles, labels, loc="outside right center", fontsize=8, title="press")
    return fig


def _presses_first(handles, labels, names):
    """Legend entries in press order, then the reference lines (all tokens, chance, the floor ring)."""
    order = sorted(range(len(labels)), key=lambda i: (0, names.index(labels[i])) if labels[i] in names else (1, i))
    return [handles[i] for i in order], [labels[i] for i in order]


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points (cost, accuracy) no other point beats on both (cheaper or equal and more accurate), by cost."""
    front, best = [], float("-inf")
    for cost, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            front.append((cost, accuracy))
            best = accuracy
    return front


def pareto_figure(rows: list[dict]):
    """Accuracy against LLM prefill ms per example (median) and against prefill FLOPs per example (press +
    LLM, counted once per row), with the Pareto front (the settings nothing beats on both axes) and chance."""
    plt = _pyplot()
    names = list(dict.fromkeys(r["press"] for r in rows))
    styles = press_styles([n for n in names if n != FULL])
    styles[FULL] = {"color": "black", "marker": "*"}
    drawn = drawn_rows(rows)
    panels = [("prefill_ms", "LLM prefill + press ms per example (median)")]
    if all(r.get("flops") for r in drawn):
        panels.append(("flops", "press + LLM prefill GFLOPs per example"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels) + 1.8, 4.6), layout="constrained",
                             squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        def cost(r, key=key):
            return r[key] / 1e9 if key == "flops" else r["prefill_ms"] + r.get("press_ms", 0.0)

        for name in names:
            mine = [r for r in drawn if r["press"] == name]
            ax.plot([cost(r) for r in mine], [r["accuracy"] for r in mine], linestyle="none", markersize=6,
                    label=name, **{k: v for k, v in styles[name].items() if k != "linestyle"})
        front = pareto_front([(cost(r), r["accuracy"]) for r in drawn])
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", linewidth=0.8,
                alpha=0.6, label="Pareto front")
        ax.axhline(CHANCE, color="grey", linestyle=":", linewidth=1, label=f"chance ({CHANCE:g})")
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_title("speed vs accuracy (timings on this machine)")
    if len(panels) > 1:
        axes[0][1].set_title("compute vs accuracy (counted, machine-independent)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8, title="press")
    return fig


def _save(fig, path) -> None:
    plt = _pyplot()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy(rows: list[dict], path) -> None:
    """Save `figure(rows)` as a PNG at `path`."""
    _save(figure(rows), path)


def plot_pareto(rows: list[dict], path) -> None:
    """Save `pareto_figure(rows)` as a PNG at `path`."""
    _save(pareto_figure(rows), path)
