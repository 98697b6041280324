"""C-GRPO: the rewards, the advantages and log-probs of the TRL trainer with pressed video, and a 2-process
`accelerate launch` run of `vidpress train cgrpo` that must change the LLM weights and leave the vision tower."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vidpress  # noqa: F401
from vidpress.presses.marc import MarcPress
from vidpress.training.cgrpo import accuracy_reward, compression_reward, format_reward, synthetic_data
from vidpress.training.cgrpo_trainer import completion_values

ROOT = Path(__file__).resolve().parents[2]


# --- rewards -------------------------------------------------------------------------------------------


def test_compression_reward_eta_tau_and_only_correct_rollouts():
    # group 1: 3 of 4 right, teacher 1.0 -> eta 0.75, r_c = 2 * (0.75 - 0.6) = 0.3 on the right ones
    # group 2: 1 of 4 right, teacher 0.5 -> eta 0.5 < tau -> 0
    # group 3: 2 of 4 right, teacher 0.25 -> eta 2.0 -> 2 * 1.4 = 2.8
    correct = torch.tensor([1, 1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 1], dtype=torch.float)
    teacher = torch.tensor([1.0] * 4 + [0.5] * 4 + [0.25] * 4)
    r = compression_reward(correct, teacher, group_size=4, alpha=2.0, tau=0.6)
    expected = torch.tensor([0.3, 0.3, 0, 0.3, 0, 0, 0, 0, 2.8, 0, 0, 2.8])
    torch.testing.assert_close(r, expected)


def test_compression_reward_teacher_zero_and_tau():
    correct = torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert compression_reward(correct, torch.zeros(4), 4, alpha=1.0).tolist() == [0, 0, 0, 0]
    # eta exactly tau: no reward; default tau is 0.6
    correct = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0])
    r = compression_reward(correct, torch.full((5,), 1.0), 5, alpha=1.0)
    assert r.tolist() == [0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="groups"):
        compression_reward(torch.ones(6), torch.ones(6), 4, alpha=1.0)


def test_accuracy_and_format_rewards():
    completions = ["B", " B.", "C", "b", "BB", [{"role": "assistant", "content": "A"}]]
    answers = ["B", "B", "B", "B", "B", "A"]
    assert accuracy_reward(completions, answers) == [1, 1, 0, 0, 0, 1]
    assert format_reward(completions, ["A,B,C,D"] * 6) == [1, 1, 1, 0, 0, 1]


def test_only_the_trainer_module_needs_trl_and_it_names_the_extra(monkeypatch):
    import importlib

    check = "import sys, vidpress.training.cgrpo; assert 'trl' not in sys.modules, 'cgrpo imported trl'"
    subprocess.run([sys.executable, "-c", check], check=True, cwd=ROOT)
    monkeypatch.setitem(sys.modules, "trl", None)  # as if trl were not installed
    monkeypatch.delitem(sys.modules, "vidpress.training.cgrpo_trainer", raising=False)
    extra = r'needs trl from the \[train\] extra: pip install "vidpress\[train\]"'
    with pytest.raises(ModuleNotFoundError, match=extra) as caught:
        importlib.import_module("vidpress.training.cgrpo_trainer")
    assert caught.value.name == "trl"  # the CLI turns this into its one-line error naming the extra


def test_completion_values_left_align_the_labelled_positions():
    values = torch.arange(12.0).view(2, 6)
    labels = torch.tensor([[-100, -100, 5, 6, -100, -100], [-100, -100, -100, -100, -100, 7]])
    out = completion_values(values, labels, 3)
    assert out.tolist() == [[2, 3, 0], [11, 0, 0]]


# --- the trainer (one process) -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    from datasets import Dataset
    from trl import GRPOConfig

    from vidpress.synthetic.reference import load_reference
    from vidpress.training.cgrpo import synthetic_data, teacher_accuracy
    from vidpress.training.cgrpo_trainer import CGRPOTrainer

    torch.manual_seed(0)
    model, processor = load_reference()
    rows, videos = synthetic_data(model, processor, "train", 6, progress=False)
    teacher = teacher_accuracy(model, processor.tokenizer, videos, rows, num_samples=4, progress=False)
    assert all(0.0 <= t <= 1.0 for t in teacher)
    for row, acc in zip(rows, teacher):
        row["teacher_accuracy"] = acc
    args = GRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("cgrpo")), use_cpu=True, bf16=False, per_device_train_batch_size=8,
        num_generations=4, max_completion_length=2, temperature=1.5, top_k=0, beta=0.04, loss_type="grpo",
        max_steps=1, report_to=[], save_strategy="no", activation_checkpointing=False, remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = CGRPOTrainer(model, MarcPress(), videos, alpha=1.0, tau=0.6, args=args,
                           train_dataset=Dataset.from_list(rows), processing_class=processor.tokenizer)
    return trainer, rows


def test_advantages_are_group_normalised_total_rewards(trainer):
    trainer, rows = trainer
    torch.manual_seed(1)
    batch = [rows[i] for i in range(6) for _ in range(4)]  # six groups of G=4, as TRL's sampler lays them out
    trainer.model.train()
    output = trainer._generate_and_score_completions(batch)
    texts = trainer.processing_class.batch_decode(output["completion_ids"], skip_special_tokens=True)
    correct = torch.tensor(accuracy_reward(texts, [r["answer"] for r in batch]))
    teacher = torch.tensor([r["teacher_accuracy"] for r in batch])
    total = correct + compression_reward(correct, teacher, 4, alpha=1.0, tau=0.6)
    grouped = total.view(6, 4)
    expected = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)
    torch.testing.assert_close(output["advantages"].cpu(), expected, rtol=1e-4, atol=1e-4)
    assert output["advantages"].abs().sum() > 0  # some group has mixed outcomes at this seed
    assert output["video"].tolist() == [i for i in range(6) for _ in range(4)]
    assert trainer.model.config.video_token_id in trainer.generation_config.suppress_tokens
    # rollouts are sampled from the pressed input: completions are the letter and <|im_end|>
    assert output["completion_ids"].shape[1] <= 2


def test_log_probs_match_a_direct_pressed_forward(trainer):
    trainer, rows = trainer
    tok = trainer.processing_class
    model = trainer.model
    letters = [tok.convert_tokens_to_ids(x) for x in "AB"]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    prompts = [tok(rows[i]["prompt"])["input_ids"] for i in (1, 2)]
    completions = [[letters[0], end], [letters[1]]]  # different lengths: right padding in the completion
    width = 2
    P = max(map(len, prompts))
    ids = torch.full((2, P + width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for r, (p, c) in enumerate(zip(prompts, completions)):
        ids[r, P - len(p) : P] = torch.tensor(p)
        ids[r, P : P + len(c)] = torch.tensor(c)
        mask[r, P - len(p) : P + len(c)] = 1
    trainer._video_rows = [1, 2]
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, width, batch_size=1)
    # reference: each sample alone, pressed, plain log-softmax of the logits / temperature
    from vidpress.models import apply_press

    for r in range(2):
        n = len(prompts[r]) + len(completions[r])
        one = {"input_ids": ids[r : r + 1, P - len(prompts[r]) : P + len(completions[r])]}
        one["attention_mask"] = torch.ones_like(one["input_ids"])
        one.update(trainer.videos.model_inputs([r + 1], one["input_ids"], model))
        with torch.no_grad(), apply_press(MarcPress(), model):
            logits = model(**one).logits[0].float() / trainer.temperature
        k = len(completions[r])
        log_probs = torch.log_softmax(logits[-k - 1 : -1], -1)
        expected = log_probs.gather(1, torch.tensor(completions[r])[:, None]).squeeze(1)
        torch.testing.assert_close(logps[r, :k], expected, rtol=1e-4, atol=1e-4)
        assert n > 0


def test_rejects_unsupported_family_and_missing_columns(tiny_model):
    from datasets import Dataset

    from vidpress.training.cgrpo import VideoFeatures
    from vidpress.training.cgrpo_trainer import CGRPOTrainer

    model, processor = tiny_model("llava_onevision")
    videos = VideoFeatures([torch.zeros(4, 8)], torch.tensor([[1, 2, 2]]))
    with pytest.raises(ValueError, match="qwen2_5_vl"):
        CGRPOTrainer(model, MarcPress(), videos, train_dataset=Dataset.from_list([{"prompt": "x"}]))
    model, processor = tiny_model("qwen2_5_vl")
    with pytest.raises(ValueError, match="teacher_accuracy"):
        CGRPOTrainer(model, MarcPress(), videos,
                     train_dataset=Dataset.from_list([{"prompt": "x", "video": 0, "answer": "A"}]))
    # MARC's retrieval before the encoder needs each video's retrieved clips
    from vidpress.evaluation.marc_vmr import EpisodicMarcPress

    with pytest.raises(ValueError, match="VideoFeatures.clips"):
        CGRPOTrainer(model, EpisodicMarcPress(budget_tokens=4), videos)
    with pytest.raises(ValueError, match="retrieved clips of 2 videos"):
        VideoFeatures([torch.zeros(4, 8)], torch.tensor([[1, 2, 2]]), clips=[(2, [(0, 2)])] * 2)
    with pytest.raises(ValueError, match="needs the frames"):
        synthetic_data(model, processor, "train", 1, progress=False, retrieve=lambda examples: [])


# --- accelerate, 2 CPU processes ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_accelerate_two_processes_train_and_change_the_llm(tmp_path):
    from safetensors.torch import load_file

    from vidpress.synthetic.reference import REFERENCE_DIR

    out = tmp_path / "student"
    # accelerate's torchrun launcher with no GPU visible runs gloo on CPU; `--cpu` alone starts one process unless
    # an MPI hostfile is given.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "CUDA_VISIBLE_DEVICES": ""}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        "-m", "vidpress", "train", "cgrpo", "--out", str(out), "--train-examples", "8", "--steps", "3",
        "--prompts-per-step", "4", "--num-generations", "4", "--temperature", "2.0", "--lr", "1e-3",
        "--test-examples", "0", "--threads", "1", "--quiet",
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "saved to" in result.stdout
    before = load_file(REFERENCE_DIR / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all("visual" not in k for k in changed), changed
    assert any(".layers." in k for k in changed), changed
    assert (out / "MODEL_CARD.md").is_file()
    assert json.loads((out / "metrics.json").read_text())["processes"] == 2


@pytest.mark.slow
def test_long_family_student_through_retrieval_before_the_encoder(tmp_path):
    # MARC as released: the dual encoder picks the clips from the frames, MarcPress merges them to one frame
    from vidpress.cli import main
    from vidpress.synthetic.reference import CLIP_RETRIEVER_DIR

    out = tmp_path / "student"
    assert main(["train", "cgrpo", "--family", "long", "--retriever", str(CLIP_RETRIEVER_DIR), "--out", str(out),
                 "--train-examples", "4", "--steps", "1", "--prompts-per-step", "2", "--num-generations", "4",
                 "--teacher-samples", "2", "--test-examples", "4", "--threads", "1", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["retriever"] == str(CLIP_RETRIEVER_DIR) and metrics["budget_tokens"] == 4  # one 2 x 2 frame
    assert metrics["test"]["marc + C-GRPO"]["visual_tokens"] == pytest.approx(4.0)
    assert "retrieval of the top 3 clips from the frames before the encoder" in (out / "MODEL_CARD.md").read_text()
    from vidpress.training.cgrpo import train_cgrpo

    with pytest.raises(ValueError, match="needs --family"):
        train_cgrpo(tmp_path / "x", retriever=CLIP_RETRIEVER_DIR, train_examples=2, steps=1, test_examples=0)
