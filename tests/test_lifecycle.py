"""The run lifecycle: derived settings resolved in the open, atomic writes with the usual mode, learning curves,
and the last word a finished run prints."""

import json
import os
import stat

import pytest
import yaml
from helpers import load_recipe, tiny_args

from ftpeft.core.outputs import atomic_write_text, staged
from ftpeft.core.settings import derived_settings, resolve_settings

bert_cls = load_recipe("bert_cls")


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_a_run_records_what_it_derived_draws_curves_and_says_where_things_are(
    tiny_bert_dir, text_csv_dir, tmp_path, capsys, umask_022
):
    out = tmp_path / "run"
    argv = tiny_args(tiny_bert_dir, text_csv_dir, out, "--unfreeze-last", "2", "--logging_steps", "1")
    metrics = bert_cls.main([*argv, "--head_lr", "1e-2"])
    settings = json.loads((out / "resolved_settings.json").read_text())
    assert settings["average_tokens_across_devices"] == {
        "given": True,
        "used": False,
        "why": "per-example classification loss: no token averaging across ranks",
    }
    recorded = settings["environment"]["used"]  # the software it ran with, in the card too
    assert {"python", "torch", "transformers", "peft", "timm", "accelerate", "datasets", "ftpeft"} <= set(recorded)
    assert f"- Software: Python {recorded['python']}, torch {recorded['torch']}" in (out / "README.md").read_text()
    # run_args.yaml stays the arguments as given: it reruns with --config and names no derived setting
    given = yaml.safe_load((out / "run_args.yaml").read_text())
    assert "average_tokens_across_devices" not in given and given["head_lr"] == 0.01
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![learning curve](learning_curve.png)" in (out / "README.md").read_text()
    for name in ("metrics.json", "README.md", "run_args.yaml", "resolved_settings.json", "freeze_report.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name  # a teammate can read a shared run
    printed = capsys.readouterr().out
    last = printed[printed.index("done: ") :].splitlines()
    assert last[0] == f"done: test accuracy {metrics['test_accuracy']:.4f}, macro_f1 {metrics['test_macro_f1']:.4f} " \
        "(the test split, scored once)"  # fmt: skip
    assert last[2].startswith(f"output: {out} (") and "metrics.json" in last[2] and "model.safetensors" in last[2]
    assert last[3] == "load it:" and f'pipeline("text-classification", model="{out}")' in printed


def test_derived_settings_are_pure_and_resolving_applies_and_records_them(tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), push_to_hub=False, report_to="none", hub_token="hf_secret123")
    changes = derived_settings(args, keep_all_columns=True)
    assert args.remove_unused_columns is True and args.hub_token == "hf_secret123"  # nothing applied yet
    record = resolve_settings(args, changes)
    assert args.remove_unused_columns is False and args.average_tokens_across_devices is False
    assert args.hub_token is None and record["hub_token"]["given"] == "***"  # the token is never recorded
    assert resolve_settings(args, derived_settings(args, keep_all_columns=True)) == {}  # idempotent


def test_staged_writes_keep_the_old_file_on_error_and_use_the_umask_mode(tmp_path, umask_022):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), staged(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    folder = tmp_path / "cache"
    with staged(folder, directory=True) as tmp:
        (tmp / "a.npy").write_bytes(b"x")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755 and (folder / "a.npy").read_bytes() == b"x"


def test_report_to_tensorboard_writes_event_files_offline(tiny_bert_dir, text_csv_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    argv = tiny_args(tiny_bert_dir, text_csv_dir, out, "--unfreeze-last", "1", "--logging_steps", "1")
    bert_cls.main([*argv, "--report_to", "tensorboard"])
    events = sorted(out.rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file written"
    scalars = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    assert "train/loss" in scalars and "eval/accuracy" in scalars
