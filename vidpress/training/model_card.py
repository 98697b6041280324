"""MODEL_CARD.md of what a `vidpress train` trainer saved: one layout for every trainer, the sections are its own."""

from __future__ import annotations

from pathlib import Path


def write_model_card(out_dir, title: str, intro: list[str], sections: list[list[str]], command: str,
                     results: list[list[str]] = ()) -> Path:
    """Write `out_dir`/MODEL_CARD.md and return its path: "# title", the intro lines, each of `sections` (lines
    starting with its "## heading"), the shell command that trained it, then each of `results` (same form)."""
    lines = [f"# {title}", "", *intro, ""]
    for section in sections:
        lines += [*section, ""]
    lines += ["Command:", "", "```bash", command, "```", ""]
    for section in results:
        lines += [*section, ""]
    path = Path(out_dir) / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path
