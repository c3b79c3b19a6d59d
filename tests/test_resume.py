"""Kill tests: a run SIGKILLed mid-training (or leaving a half-written checkpoint) resumes to the same end.

Weights and eval/test metrics are exactly equal: on CPU the tiny model's kernels are deterministic, and Trainer restores the data
order (same seeded sampler, skipped batches), the RNG states and the LR schedule from the checkpoint.
"""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import RECIPES, ROOT, python_recipe, snapshot, subprocess_env, tiny_args
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
STEPS = ["--max_steps", "120", "--save_strategy", "steps", "--save_steps", "20", "--save_total_limit", "2",
         "--unfreeze-last", "2", "--learning_rate", "1e-3"]  # fmt: skip


def final_state(out):
    return load_file(out / "model.safetensors"), json.loads((out / "metrics.json").read_text())


def assert_same_end(reference, resumed):
    (ref_weights, ref_metrics), (weights, metrics) = final_state(reference), final_state(resumed)
    assert ref_weights.keys() == weights.keys()
    for name in ref_weights:
        assert torch.equal(ref_weights[name], weights[name]), name
    # train_loss is left out: Trainer's running average restarts from the checkpoint's logged value
    for key in ("eval_loss", "eval_accuracy", "test_loss", "test_accuracy"):
        assert metrics[key] == ref_metrics[key], key


@pytest.fixture(scope="module")
def uninterrupted(tiny_bert_dir, text_csv_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "reference"
    result = python_recipe("bert_cls", *tiny_args(tiny_bert_dir, text_csv_dir, out, *STEPS))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def run_and_kill_after_checkpoint(args, out, step):
    process = subprocess.Popen([sys.executable, str(RECIPES / "bert_cls.py"), *args], cwd=ROOT,
                               env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 240
    while not (out / f"checkpoint-{step}" / "trainer_state.json").is_file():
        assert process.poll() is None, "finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "metrics.json").exists()  # it really died mid-run


def test_sigkill_mid_training_then_resume_auto(uninterrupted, tiny_bert_dir, text_csv_dir, tmp_path):
    out = tmp_path / "killed"
    args = tiny_args(tiny_bert_dir, text_csv_dir, out, *STEPS)
    run_and_kill_after_checkpoint(args, out, 40)
    result = python_recipe("bert_cls", *args, "--resume_from_checkpoint", "auto")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_end(uninterrupted, out)


@pytest.mark.parametrize("damage", ["no_trainer_state", "truncated_trainer_state", "no_weights"])
def test_half_written_checkpoint_is_never_loaded(uninterrupted, tiny_bert_dir, text_csv_dir, tmp_path, damage):
    out = tmp_path / "half"
    args = tiny_args(tiny_bert_dir, text_csv_dir, out, *STEPS)
    run_and_kill_after_checkpoint(args, out, 40)
    for later in out.glob("checkpoint-*"):
        if int(later.name.split("-")[1]) > 40:
            shutil.rmtree(later)
    # what a kill during the save of checkpoint-60 leaves behind
    half = out / "checkpoint-60"
    half.mkdir()
    (half / "optimizer.pt").write_bytes(b"\0" * 10)
    if damage != "no_weights":
        (half / "model.safetensors").write_bytes((out / "checkpoint-40" / "model.safetensors").read_bytes()[:100])
    if damage == "truncated_trainer_state":
        (half / "trainer_state.json").write_text('{"global_step": 6')
    elif damage == "no_weights":
        (half / "trainer_state.json").write_text("{}")
    result = python_recipe("bert_cls", *args, "--resume_from_checkpoint", "auto")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_end(uninterrupted, out)


def test_explicit_incomplete_or_missing_checkpoint_is_refused(tiny_bert_dir, text_csv_dir, tmp_path):
    broken = tmp_path / "out" / "checkpoint-5"
    broken.mkdir(parents=True)
    before = snapshot(tmp_path / "out")
    for path, message in ((broken, "incomplete checkpoint"), (tmp_path / "nope", "no such checkpoint directory")):
        result = python_recipe("bert_cls", *tiny_args(tiny_bert_dir, text_csv_dir, tmp_path / "out"),
                               "--resume_from_checkpoint", str(path))  # fmt: skip
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert snapshot(tmp_path / "out") == before
