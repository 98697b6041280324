"""OVO-Bench: online video questions asked at a timestamp (backward tracing, real-time perception, forward
responding)."""

from __future__ import annotations

import re

from vidpress.evaluation.benchmarks.base import (
    LETTERS,
    Benchmark,
    Sample,
    check_root,
    drop_missing_videos,
    frames_before,
    register_benchmark,
)
from vidpress.files import read_json, require_keys

#: The three modes and their tasks (OVO-Bench, Li et al., CVPR 2025, arXiv 2501.05510; the authors' release).
OVO_MODES = {
    "backward": ("EPM", "ASI", "HLD"),
    "realtime": ("STU", "OJR", "ATR", "ACR", "OCR", "FPD"),
    "forward": ("REC", "SSR", "CRR"),
}
OVO_TASKS = {task: mode for mode, tasks in OVO_MODES.items() for task in tasks}
ANNOTATION = "ovo_bench_new.json"


@register_benchmark
class OVOBench(Benchmark):
    """OVO-Bench (arXiv 2501.05510). Layout: `ovo_bench_new.json` (a list; each entry has id, task, video (path under
    the data root) and either question, options, gt (the right option's index) and realtime (seconds), or, for the
    forward tasks, test_info: a list of probes, each with realtime and count (REC) or type (1: yes, 0: no; SSR with
    the step text, CRR with the entry's question)).

    Every question (every forward probe) is asked at its realtime, having seen only the video before it. Scoring
    follows the authors' release: backward / real-time answers are right when the option letter occurs in the
    response; REC when the digits of the response, joined, are the count; SSR / CRR when the response is "Y" / "N"
    or contains "Yes" / "No" as the probe's type says. Accuracy per task; each mode's average and the total average
    are means over tasks.
    """

    name = "ovobench"
    categories = ("task", "mode")
    streaming = True

    def load(self, root, skip_missing=False):
        root = check_root(root, "OVO-Bench")
        path = root / ANNOTATION
        if not path.is_file():
            raise ValueError(f"{path}: no OVO-Bench annotation file (layout: {ANNOTATION} and the videos its "
                             "`video` fields name, under --data)")
        samples = []
        for i, entry in enumerate(read_json(path, "OVO-Bench annotation", list)):
            where = f"{path} entry {i}"
            require_keys(entry, ("id", "task", "video"), where)
            task = str(entry["task"])
            if task not in OVO_TASKS:
                raise ValueError(f"{where}: unknown task {task!r}; OVO-Bench's tasks are {', '.join(OVO_TASKS)}")
            video = root / entry["video"]
            base = dict(video=video, categories={"task": task, "mode": OVO_TASKS[task]})
            if OVO_TASKS[task] != "forward":
                require_keys(entry, ("question", "options", "gt", "realtime"), where)
                options = [str(o) for o in entry["options"]]
                gt = int(entry["gt"])
                if not 0 <= gt < len(options):
                    raise ValueError(f"{where}: gt {gt} is not an index into its {len(options)} options")
                samples.append(Sample(id=_safe(f"{task}-{entry['id']}"), question=str(entry["question"]),
                                      options=options, answer=LETTERS[gt], ask_at=float(entry["realtime"]), **base))
                continue
            require_keys(entry, ("test_info",), where)
            for k, probe in enumerate(entry["test_info"]):
                probe_where = f"{where} test_info {k}"
                require_keys(probe, ("realtime", "count" if task == "REC" else "type"), probe_where)
                if task == "REC":
                    require_keys(entry, ("activity",), where)
                    question, answer = f"How many times did they {entry['activity']}?", str(int(probe["count"]))
                else:
                    require_keys(probe if task == "SSR" else entry, ("step",) if task == "SSR" else ("question",),
                                 probe_where if task == "SSR" else where)
                    question = str(probe["step"] if task == "SSR" else entry["question"])
                    answer = "Yes" if int(probe["type"]) == 1 else "No"
                samples.append(Sample(id=_safe(f"{task}-{entry['id']}-{k}"), question=question, options=[],
                                      answer=answer, ask_at=float(probe["realtime"]), **base))
        return drop_missing_videos(samples, skip_missing, f"OVO-Bench layout: {ANNOTATION} + the videos it names")

    def frame_indices(self, sample, total_frames, fps, num_frames):
        return frames_before(total_frames, fps, num_frames, sample.ask_at)

    def prompt(self, sample):
        task = sample.categories["task"]
        if task == "REC":
            return ("You're watching a video in which people may perform a certain type of action repetitively. The "
                    "person performing this kind of action is referred to as 'they' in the following statement. "
                    "Your task is to count how many times different people in the video perform this kind of action "
                    f"in total. One complete motion counts as one. Now, answer the following question: "
                    f"{sample.question}\nProvide your answer as a single number (e.g., 0, 1, 2, 3...) indicating the "
                    "total count. Do not include any additional text or explanation in your response.")
        if task == "SSR":
            return ("You're watching a tutorial video which contains a sequence of steps. The following is one step "
                    f"from the whole procedure:\n{sample.question}\nYour task is to determine if the man or woman in "
                    "the video is currently performing this step. Answer only with \"Yes\" or \"No\". Do not include "
                    "any additional text or explanation in your response.")
        if task == "CRR":
            return ("You're responsible for answering questions based on the video content. The following question "
                    f"is relevant to the latest frames, i.e. the end of the video.\n{sample.question}\nDecide whether "
                    "the existing visual content, especially the latest frames, i.e. frames near the end of the "
                    "video, provides enough information for answering the question. Answer only with \"Yes\" or "
                    "\"No\". Do not include any additional text or explanation in your response.")
        options = "; ".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(sample.options)) + ";"
        return (f"Question: {sample.question}\nOptions:\n{options}\nRespond only with the letter corresponding to "
                "your chosen option (e.g., A, B, C). Do not include any additional text or explanation in your "
                "response.")

    def extract(self, response, sample):
        task = sample.categories["task"]
        if task == "REC":
            digits = "".join(re.findall(r"\d+", response))
            return digits or None
        if task in ("SSR", "CRR"):
            text = response.strip()
            if text in ("Y", "N"):
                return "Yes" if text == "Y" else "No"
            found = [word for word in ("Yes", "No") if word in text]
            return found[0] if len(found) == 1 else None
        match = re.search(f"[{LETTERS[: len(sample.options)]}]", response)
        return match.group(0) if match else None

    def is_correct(self, response, sample):
        task = sample.categories["task"]
        if task == "REC":
            return "".join(re.findall(r"\d+", response)) == sample.answer
        if task in ("SSR", "CRR"):
            short = "Y" if sample.answer == "Yes" else "N"
            return response == short or sample.answer in response
        return sample.answer in response  # the authors' rule: the right letter anywhere in the response

    def summarize(self, records):
        summary = super().summarize(records)
        tasks = summary["by"].get("task", {})
        means = {}
        for mode, names in OVO_MODES.items():
            present = [tasks[t]["accuracy"] for t in names if t in tasks]
            if present:
                means[mode] = sum(present) / len(present)
        summary["mode_avg"] = means
        every = [group["accuracy"] for group in tasks.values()]
        summary["total_avg"] = sum(every) / len(every) if every else float("nan")
        return summary


def _safe(text: str) -> str:
    """An id usable as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


