"""Checkpoints that prove they are whole (issue 26, part 3): the seal, rotation after it, and writes that fail.

A full disk cannot be mounted here (no tmpfs without privileges), so writes fail where they happen: torch.save and
Python's own writes are pointed at /dev/full (the kernel's ENOSPC, through the real serializers); safetensors writes
through a temporary file, so its write is replaced by the error it raises on a full disk; the seal and the reports
raise OSError(ENOSPC) from ftpeft's own writer.

| fault | expected |
|---|---|
| a sealed checkpoint: a byte changed, a file cut or missing, the seal open, unreadable or pointing outside | auto skips |
|                                                                                                            | it, saying why |
| a checkpoint saved before seals existed; a file added after the seal | it resumes |
| --save_total_limit 1, the save of checkpoint-16 | checkpoint-8 is deleted only once checkpoint-16 is sealed |
| ENOSPC in torch.save, safetensors, trainer_state.json or the seal of checkpoint-16 | one ``error:`` line, exit 2; |
|                                                                                      | checkpoint-16 removed, -8 |
|                                                                                      | intact; resumed: the same end |
| ENOSPC in the final save; writing metrics.json | the same; nothing half-written moved into place |
| ENOSPC re-saving the checkpoint whose evaluation a preemption owed | the checkpoint it was replacing is back |
| a save killed while it had the previous copy set aside | the copy is put back at the next start |
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import assert_same_end, call_entry_point, damage_file, load_recipe, signals_during_training, tiny_args
from safetensors import SafetensorError

from ftpeft.core import checkpoints, lifecycle
from ftpeft.core.checkpoints import aside_path, recover_set_aside
from ftpeft.core.outputs import SEAL_FILE, checkpoint_problem, last_complete_checkpoint
from ftpeft.core.preemption import CHECKPOINT_NOTE, PREEMPTED_EXIT_CODE

bert_cls = load_recipe("bert_cls")

# 24 steps, evaluated and saved every 8, one checkpoint kept; an evaluation is 8 batches of 2
STEPS = ["--max_steps", "24", "--save_strategy", "steps", "--save_steps", "8", "--save_total_limit", "1",
         "--eval_strategy", "steps", "--eval_steps", "8", "--per_device_eval_batch_size", "2",
         "--unfreeze-last", "2", "--learning_rate", "1e-3"]  # fmt: skip
NO_SPACE = os.strerror(errno.ENOSPC)


def argv(model_dir, data_dir, out, *extra) -> list[str]:
    return tiny_args(model_dir, data_dir, out, *STEPS, *extra)


@pytest.fixture(scope="module")
def reference(tiny_bert_dir, text_csv_dir, tmp_path_factory):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("sealed") / "reference"
    outcome = call_entry_point(bert_cls.main, argv(tiny_bert_dir, text_csv_dir, out))
    assert outcome.code == 0, outcome.stderr[-3000:]
    return out


def seal_of(folder: Path) -> dict:
    return json.loads((folder / SEAL_FILE).read_text())


# --- the seal and rotation ------------------------------------------------------------------------------------------


def test_each_checkpoint_is_sealed_after_its_files_and_the_old_one_goes_only_then(
    tiny_bert_dir, text_csv_dir, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    at_seal = []
    close_seal = checkpoints.close_seal

    def recording(folder, world_size, step):
        at_seal.append((folder.name, sorted(p.name for p in out.glob("checkpoint-*"))))
        close_seal(folder, world_size, step)

    monkeypatch.setattr(checkpoints, "close_seal", recording)
    outcome = call_entry_point(bert_cls.main, argv(tiny_bert_dir, text_csv_dir, out))
    assert outcome.code == 0, outcome.stderr[-3000:]
    # at each seal the previous checkpoint is still there (Trainer would have deleted it inside the save)
    assert at_seal == [("checkpoint-8", ["checkpoint-8"]), ("checkpoint-16", ["checkpoint-16", "checkpoint-8"]),
                       ("checkpoint-24", ["checkpoint-16", "checkpoint-24"])]  # fmt: skip
    last = out / "checkpoint-24"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [last.name]
    seal = seal_of(last)
    files = sorted(p.relative_to(last).as_posix() for p in last.rglob("*") if p.is_file() and p.name != SEAL_FILE)
    assert (seal["sealed"], seal["step"], seal["world_size"], sorted(seal["files"])) == (True, 24, 1, files)
    assert {"model.safetensors", "optimizer.pt", "rng_state.pth", "trainer_state.json"} <= set(files)
    assert checkpoint_problem(last) is None


DAMAGES = [  # how the newer checkpoint is damaged, what auto says about it (None: it is taken)
    ("a byte changed, same size", "optimizer.pt", ("overwrite", 0.5, b"\xff"), "optimizer.pt differs from the sealed"),
    ("weights cut short", "model.safetensors", ("truncate", 0.5, b""), "model.safetensors is "),
    ("RNG state missing", "rng_state.pth", ("delete", 0.0, b""), "rng_state.pth is missing"),
    ("seal left open", SEAL_FILE, ("replace", 0.0, b'{"sealed": false, "step": 32}'), "unsealed: its save never"),
    ("seal unreadable", SEAL_FILE, ("truncate", 0.5, b""), "its seal (ftpeft_checkpoint.json) is unreadable"),
    ("saved before seals existed", SEAL_FILE, ("delete", 0.0, b""), None),
]


@pytest.mark.parametrize(("file", "damage", "problem"), [d[1:] for d in DAMAGES], ids=[d[0] for d in DAMAGES])
def test_auto_skips_a_checkpoint_that_does_not_match_its_seal(reference, tmp_path, caplog, file, damage, problem):
    older, newer = tmp_path / "checkpoint-24", tmp_path / "checkpoint-32"
    shutil.copytree(reference / "checkpoint-24", older)
    shutil.copytree(older, newer)
    if file == SEAL_FILE and damage[0] == "replace":
        (newer / file).write_bytes(damage[2])
    else:
        damage_file(newer / file, *damage)
    assert last_complete_checkpoint(tmp_path) == (newer if problem is None else older)
    if problem is not None:
        assert problem in checkpoint_problem(newer) and problem in caplog.text
    if file == "rng_state.pth":  # what the seal adds: without it, nothing else notices the lost RNG state
        (newer / SEAL_FILE).unlink()
        assert checkpoint_problem(newer) is None


def test_files_added_after_the_seal_are_no_part_of_it_and_a_seal_cannot_point_outside(reference, tmp_path):
    folder = tmp_path / "checkpoint-24"
    shutil.copytree(reference / "checkpoint-24", folder)
    (folder / "notes.txt").write_text("added later")
    assert checkpoint_problem(folder) is None
    seal = seal_of(folder)
    seal["files"]["../outside"] = {"bytes": 0, "sha256": ""}
    (folder / SEAL_FILE).write_text(json.dumps(seal))
    assert "outside the checkpoint" in checkpoint_problem(folder)


def test_a_copy_set_aside_by_a_killed_save_is_put_back(reference, tmp_path):
    """A resumed run saves again the step it resumed from: the old copy waits aside until the new one is sealed."""
    folder = tmp_path / "checkpoint-24"
    shutil.copytree(reference / "checkpoint-24", folder)
    before = seal_of(folder)
    os.replace(folder, aside_path(folder))
    folder.mkdir()  # what a kill during the new save leaves
    (folder / SEAL_FILE).write_text(json.dumps({"sealed": False, "step": 24}))
    (folder / "model.safetensors").write_bytes(b"\0" * 10)
    assert recover_set_aside(tmp_path) == [folder]
    assert seal_of(folder) == before and checkpoint_problem(folder) is None and not aside_path(folder).exists()
    shutil.copytree(folder, aside_path(folder))  # a kill after the new seal: the old copy is dropped
    assert recover_set_aside(tmp_path) == [] and not aside_path(folder).exists() and folder.is_dir()


# --- writes that fail -----------------------------------------------------------------------------------------------


def to_dev_full(path) -> None:
    """Make ``path`` a link to /dev/full: the next write there fails in the kernel with ENOSPC."""
    path = Path(path)
    path.unlink(missing_ok=True)
    path.symlink_to("/dev/full")


def full_disk(monkeypatch, where: str, folder: str) -> None:
    """The write of ``where`` (in ``folder``, a checkpoint or the final save's staging) fails as on a full disk."""
    if where == "optimizer.pt":
        save = torch.save

        def torch_save(obj, path, *args, **kwargs):
            if isinstance(path, (str, Path)) and Path(path).parent.name == folder and Path(path).name == where:
                to_dev_full(path)
            return save(obj, path, *args, **kwargs)

        monkeypatch.setattr(torch, "save", torch_save)
    elif where == "trainer_state.json":
        from transformers.trainer_callback import TrainerState

        save_to_json = TrainerState.save_to_json

        def state_to_json(self, path):
            if Path(path).parent.name == folder:
                to_dev_full(path)
            return save_to_json(self, path)

        monkeypatch.setattr(TrainerState, "save_to_json", state_to_json)
    elif where == "model.safetensors":
        import transformers.modeling_utils

        safe_save_file = transformers.modeling_utils.safe_save_file

        def safetensors_save(tensors, filename, *args, **kwargs):
            if Path(filename).parent.name == folder:  # safetensors' own report of the kernel's ENOSPC
                raise SafetensorError(f"Error while serializing: I/O error: {NO_SPACE} (os error {errno.ENOSPC})")
            return safe_save_file(tensors, filename, *args, **kwargs)

        monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", safetensors_save)
    else:  # ftpeft's own writes: the seal, the reports
        module = checkpoints if where == SEAL_FILE else lifecycle
        write_json = module.write_json

        def failing_write_json(path, data):
            if Path(path).name == where and Path(path).parent.name == folder and data.get("sealed", True):
                raise OSError(errno.ENOSPC, NO_SPACE, str(path))
            return write_json(path, data)

        monkeypatch.setattr(module, "write_json", failing_write_json)


def fault(name, where, folder, reason, slow=True):
    return pytest.param(where, folder, reason, id=name, marks=[pytest.mark.slow] if slow else [])


# torch.save reports a failed write from its zip writer, without the errno
TORCH_SAYS = "torch.save failed while writing (unexpected pos "
WRITE_FAULTS = [  # the write that fails, in which folder, what the error line says about it
    fault("torch.save-of-the-optimizer", "optimizer.pt", "checkpoint-16", TORCH_SAYS, slow=False),
    fault("safetensors-of-the-weights", "model.safetensors", "checkpoint-16", f"I/O error: {NO_SPACE} (os error 28)"),
    fault("trainer-state-json", "trainer_state.json", "checkpoint-16", f"{NO_SPACE} (ENOSPC)"),  # at close: no name
    fault("the-seal", SEAL_FILE, "checkpoint-16", f"{NO_SPACE} (ENOSPC, {SEAL_FILE})"),
    fault("the-final-save", "model.safetensors", ".ftpeft-staging", f"{NO_SPACE} (os error 28)"),
    fault("metrics-json", "metrics.json", "run", f"{NO_SPACE} (ENOSPC, metrics.json)"),
]


@pytest.mark.parametrize(("where", "folder", "reason"), WRITE_FAULTS)
def test_a_full_disk_ends_the_run_in_one_line_and_the_last_checkpoint_resumes(
    reference, tiny_bert_dir, text_csv_dir, tmp_path, monkeypatch, where, folder, reason
):
    out = tmp_path / "run"
    with monkeypatch.context() as patched:
        full_disk(patched, where, folder)
        failed = call_entry_point(bert_cls.main, argv(tiny_bert_dir, text_csv_dir, out))
    assert failed.code == 2 and failed.stderr.count("\n") == 1, failed.stderr[-3000:]
    message = failed.stderr
    assert message.startswith("error: could not ") and reason in message and "MiB free there" in message
    if folder == "checkpoint-16":  # a checkpoint: the partial one goes, the previous one is whole and kept
        assert f"could not save {out / 'checkpoint-16'}: " in message
        assert "The partial checkpoint was removed; checkpoint-8 is intact: free space, then rerun with " in message
        assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-8"]
        assert seal_of(out / "checkpoint-8")["sealed"] and checkpoint_problem(out / "checkpoint-8") is None
    elif folder == ".ftpeft-staging":  # the final save: nothing moved into place, the last checkpoint kept
        assert f"could not write the final model in {out}: " in message and "checkpoint-24 is kept" in message
        assert not (out / "model.safetensors").exists() and not (out / ".ftpeft-staging").exists()
    else:  # the reports: the model is saved, metrics.json is not half there
        assert f"could not write the reports in {out}: {reason}" in message
        assert (out / "model.safetensors").is_file() and not (out / "metrics.json").exists()
    assert not (out / "metrics.json").exists()
    resumed = call_entry_point(bert_cls.main, argv(tiny_bert_dir, text_csv_dir, out, "--resume_from_checkpoint",
                                                   "auto"))  # fmt: skip
    assert resumed.code == 0, resumed.stderr[-3000:]
    assert_same_end(reference, out)


@pytest.mark.slow
def test_a_full_disk_while_saving_again_the_step_a_preemption_owed_puts_the_old_copy_back(
    reference, tiny_bert_dir, text_csv_dir, tmp_path, monkeypatch
):
    """Preempted in the evaluation at step 16: the resumed run runs it, then saves checkpoint-16 again. That save
    fails: the copy it was replacing is back, still owing the evaluation, and the next resume ends as the reference."""
    out = tmp_path / "run"
    usr1 = [{"signal": "USR1", "at": "prediction", "step": 16, "batch": 4}]
    with signals_during_training(usr1):
        stopped = call_entry_point(bert_cls.main, argv(tiny_bert_dir, text_csv_dir, out))
    assert stopped.code == PREEMPTED_EXIT_CODE, stopped.stderr[-3000:]
    checkpoint = out / "checkpoint-16"
    sealed = seal_of(checkpoint)
    resume = argv(tiny_bert_dir, text_csv_dir, out, "--resume_from_checkpoint", "auto")
    with monkeypatch.context() as patched:
        full_disk(patched, "optimizer.pt", "checkpoint-16")
        failed = call_entry_point(bert_cls.main, resume)
    assert failed.code == 2 and "The checkpoint it was replacing is back; checkpoint-16 is intact" in failed.stderr
    assert seal_of(checkpoint) == sealed and checkpoint_problem(checkpoint) is None
    assert json.loads((checkpoint / CHECKPOINT_NOTE).read_text())["evaluation_pending"] is True
    assert not aside_path(checkpoint).exists()
    resumed = call_entry_point(bert_cls.main, resume)
    assert resumed.code == 0, resumed.stderr[-3000:]
    assert_same_end(reference, out)
