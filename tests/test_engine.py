"""The engine the user asked for (DDP, FSDP, DeepSpeed) is the one accelerate sets up, or the run stops before any work."""

import re
import sys
import types

import pytest
import torch
from helpers import ROOT, accelerate_bin, call_entry_point, load_recipe, mean_test_loss, run, tiny_args

from ftpeft.core.config import launch_defaults, use_cpu_ranks_without_gpu
from ftpeft.core.engine import (
    EngineRequest,
    asked_engine,
    engine_mismatch,
    fsdp_wrap_problem,
    local_parameter_bytes,
    optimizer_groups,
    refused_flags,
    zero3_save_problem,
)
from ftpeft.text.job import TEXT_LR_DEFAULTS


def _args(**fields):
    return types.SimpleNamespace(**{"fsdp": None, "fsdp_config": None, "deepspeed": None, **fields})


@pytest.mark.parametrize(
    "environ, fields, engine, detail",
    [
        ({}, {}, None, "data parallel"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, {}, "FSDP", "FSDP version 2"),
        ({}, {"fsdp": ["full_shard"], "fsdp_config": {"version": 1}}, "FSDP", "FSDP version 1"),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, {}, "DEEPSPEED", "ZeRO stage 3"),
        ({}, {"deepspeed": {"zero_optimization": {"stage": 2}}}, "DEEPSPEED", "ZeRO stage 2"),
        ({"ACCELERATE_USE_FSDP": "false"}, {}, None, "data parallel"),
    ],
)
def test_what_the_launch_asked_for(environ, fields, engine, detail):
    asked = asked_engine(_args(**fields), environ)
    assert (asked.engine, asked.detail) == (engine, detail)


@pytest.mark.parametrize(
    "asked, distributed_type, refused",
    [
        (EngineRequest("FSDP", "FSDP version 2", "the accelerate config"), "MULTI_CPU", True),  # CPU ranks: DDP
        (EngineRequest("FSDP", "FSDP version 2", "the accelerate config"), "NO", True),  # one process: no wrapper
        (EngineRequest("FSDP", "FSDP version 2", "the accelerate config"), "MULTI_GPU", False),  # upgraded to FSDP
        (EngineRequest("FSDP", "FSDP version 1", "--fsdp"), "FSDP", False),
        (EngineRequest("DEEPSPEED", "ZeRO stage 2", "the accelerate config"), "MULTI_CPU", True),
        (EngineRequest("DEEPSPEED", "ZeRO stage 3", "the accelerate config"), "MULTI_GPU", True),
        (EngineRequest("DEEPSPEED", "ZeRO stage 3", "the accelerate config"), "DEEPSPEED", False),
        (EngineRequest(None, "data parallel", "the launch"), "MULTI_CPU", False),
        (EngineRequest(None, "data parallel", "the launch"), "NO", False),
    ],
)
def test_asked_versus_what_accelerate_set_up(asked, distributed_type, refused):
    reason = engine_mismatch(asked, distributed_type)
    assert (reason is not None) == refused
    if refused:  # names both sides and what to do
        assert asked.detail in reason and f"accelerate set up {distributed_type}" in reason and "cpu_ddp.yaml" in reason
        if asked.engine == "DEEPSPEED":
            assert "drop use_cpu" in reason and "deepspeed_zero2_cpu.yaml" in reason


ZERO2 = EngineRequest("DEEPSPEED", "ZeRO stage 2", "the accelerate config")
ZERO3 = EngineRequest("DEEPSPEED", "ZeRO stage 3", "the accelerate config")
FSDP2 = EngineRequest("FSDP", "FSDP version 2", "the accelerate config")
DDP = EngineRequest(None, "data parallel", "the launch")
SECOND_TRAINER = "You cannot pass in a `deepspeed_plugin` when creating a second `Accelerator`"
HELD_BY_HOOKS = "DeepSpeedEngineWrapper.backward calls engine.step()"


# what each flag of the sibling issues does under each engine: None = runs (docs/launching.md says where
# it is tested), else a piece of the one-line refusal; docs/launching.md names each row
@pytest.mark.parametrize(
    "flags, refusals",
    [
        (["--class_weights", "balanced"], {ZERO2: None, ZERO3: None, FSDP2: None}),  # ZeRO-2, FSDP2: slow launches
        (["--cache_frozen"], {ZERO2: SECOND_TRAINER, ZERO3: SECOND_TRAINER, FSDP2: "sharded parameters"}),
        (["--lp_ft"], {ZERO2: HELD_BY_HOOKS, ZERO3: HELD_BY_HOOKS, FSDP2: "fully_shard replaces"}),
        (["--gradual_unfreeze"], {ZERO2: HELD_BY_HOOKS, ZERO3: HELD_BY_HOOKS, FSDP2: "fully_shard replaces"}),
        (["ftpeft ladder"], {ZERO2: SECOND_TRAINER, ZERO3: SECOND_TRAINER, FSDP2: "cannot run under FSDP"}),
    ],
)
def test_each_flag_runs_under_zero_or_is_refused_in_one_line(flags, refusals):
    from ftpeft.tuning.args import TuningArguments

    given = flags[0]
    if given.startswith("--"):  # the flags a recipe hands to the engine check, from its parsed arguments
        tuning = TuningArguments(unfreeze_last="2", **{given[2:]: flags[1] if len(flags) > 1 else True})
        flags = tuning.engine_dependent_flags
        assert flags == ([] if given == "--class_weights" else [given])
    for asked, piece in refusals.items():
        reason = refused_flags(asked, flags)
        if piece is None:
            assert reason is None
        else:
            engine = "FSDP" if asked.engine == "FSDP" else f"DeepSpeed {asked.detail}"
            assert reason.startswith(f"{given} cannot run under {engine}: ") and piece in reason
            assert "\n" not in reason and "cpu_ddp.yaml" in reason  # one line, and what to launch instead
    assert refused_flags(DDP, flags) is None  # DDP and one process run every flag


@pytest.mark.parametrize(
    "entry, extra, refused",
    [
        ("bert_cls", ["--unfreeze-last", "2", "--lp_ft"], "--lp_ft"),
        ("bert_cls", ["--unfreeze-last", "2", "--cache_frozen"], "--cache_frozen"),
        ("ladder", ["--time_budget", "1m"], "ftpeft ladder"),
    ],
)
def test_recipes_and_the_ladder_refuse_under_zero_before_any_work(
    monkeypatch, tiny_bert_dir, text_csv_dir, tmp_path, entry, extra, refused
):
    from ftpeft.core import engine

    # accelerate set up the ZeRO-2 the launch asked for (what a 2-rank launch of deepspeed_zero2_cpu.yaml gives)
    monkeypatch.setattr(engine, "asked_engine", lambda training_args: ZERO2)
    monkeypatch.setattr(engine, "engine_mismatch", lambda asked, distributed_type: None)
    out = tmp_path / "out"
    outcome = call_entry_point(load_recipe(entry).main, tiny_args(tiny_bert_dir, text_csv_dir, out, *extra))
    assert outcome.code == 2, outcome.stderr[-3000:]
    error = outcome.stderr.rstrip().splitlines()[-1]
    assert error.startswith(f"error: {refused} cannot run under DeepSpeed ZeRO stage 2: ")
    assert not out.exists()  # before any work


def test_parameter_bytes_count_the_local_shard():
    class Shard(torch.nn.Parameter):  # what a DTensor parameter offers: its full shape, and to_local()
        def to_local(self):
            return self.detach()[: self.shape[0] // 2]

    model = torch.nn.Linear(4, 8)  # weight 32 + bias 8 floats
    assert local_parameter_bytes(model) == (40 * 4, 40 * 4)
    model.weight = Shard(model.weight.detach())
    assert local_parameter_bytes(model) == ((16 + 8) * 4, 40 * 4)
    # a ZeRO-3 parameter between uses: empty, its shard in ds_tensor (a third here) and its size in ds_numel
    model.bias = torch.nn.Parameter(torch.empty(0))
    model.bias.ds_tensor, model.bias.ds_numel = torch.zeros(3), 8
    assert local_parameter_bytes(model) == ((16 + 3) * 4, 40 * 4)


def test_optimizer_groups_give_each_groups_lr_before_warmup_and_full_counts():
    from transformers import get_linear_schedule_with_warmup

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    groups = [
        {"params": list(model[1].parameters()), "lr": 1e-3, "weight_decay": 0.0},
        {"params": [model[0].weight], "lr": 2.4e-4, "weight_decay": 0.01},
    ]
    optimizer = torch.optim.AdamW(groups)
    get_linear_schedule_with_warmup(optimizer, num_warmup_steps=2, num_training_steps=4)  # LRs now 0
    assert [group["lr"] for group in optimizer.param_groups] == [0.0, 0.0]
    assert (
        optimizer_groups(optimizer) == "lr 0.001 wd 0 tensors 2 elements 18; lr 0.00024 wd 0.01 tensors 1 elements 32"
    )


FSDP_ON_CPU = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
use_cpu: true
num_machines: 1
num_processes: 2
machine_rank: 0
mixed_precision: 'no'
rdzv_backend: static
same_network: true
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_cpu_ram_efficient_loading: false
  fsdp_offload_params: false
  fsdp_reshard_after_forward: true
  fsdp_state_dict_type: FULL_STATE_DICT
"""


@pytest.mark.slow
def test_fsdp2_config_without_a_layer_class_exits_2_before_any_work(tiny_bert_dir, text_csv_dir, tmp_path):
    # accelerate's multi_gpu launcher does not pass use_cpu on to the ranks, so this config shards the CPU ranks as
    # fsdp_cpu.yaml does (it trained with DDP while ftpeft set ACCELERATE_USE_CPU); its TRANSFORMER_BASED_WRAP names
    # no layer class, and torch's fully_shard then fails mid-setup with a TypeError traceback
    config = tmp_path / "fsdp_cpu.yaml"
    config.write_text(FSDP_ON_CPU)
    out = tmp_path / "fsdp"
    script = str(ROOT / "recipes/bert_cls.py")
    argv = tiny_args(tiny_bert_dir, text_csv_dir, out, "--unfreeze-last", "2")
    result = run([accelerate_bin(), "launch", "--config_file", str(config), script, *argv], timeout=300)
    assert result.returncode != 0
    expected = (
        "error: the accelerate config asks for FSDP version 2 with TRANSFORMER_BASED_WRAP but names no "
        "fsdp_transformer_layer_cls_to_wrap: "
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    # one line from each rank (the stderr shown when not: a fresh-clone run once saw no error line at all)
    assert len(errors) == 2 and all(line.startswith(expected) for line in errors), result.stderr[-3000:]
    # the launcher exits 1 with its own ChildFailedError traceback, reporting each rank's usage exit code
    assert "exitcode  : 2" in result.stderr and "DistributedDataParallel" not in result.stderr
    assert "raise TypeError" not in result.stderr  # no rank got as far as fully_shard
    assert not out.exists()  # before any work


@pytest.mark.parametrize(
    "asked, environ, refused",
    [
        (FSDP2, {"FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP"}, True),
        (FSDP2, {"FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", "FSDP_TRANSFORMER_CLS_TO_WRAP": "BertLayer"}, False),
        (FSDP2, {"FSDP_AUTO_WRAP_POLICY": "SIZE_BASED_WRAP"}, False),
        (EngineRequest("FSDP", "FSDP version 1", "the accelerate config"), {"FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP"}, False),
        (ZERO2, {"FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP"}, False),
    ],
)  # fmt: skip
def test_fsdp2_needs_the_layer_class_to_wrap(asked, environ, refused):
    reason = fsdp_wrap_problem(asked, environ)
    assert (reason is not None) == refused
    if refused:
        assert "fsdp_transformer_layer_cls_to_wrap: BertLayer" in reason and "\n" not in reason


@pytest.mark.parametrize(
    "asked, environ, refused",
    [
        (ZERO3, {}, True),
        (ZERO3, {"ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "false"}, True),
        (ZERO3, {"ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true"}, False),  # the shipped zero3 configs
        (ZERO2, {}, False),
        (FSDP2, {}, False),
        (EngineRequest("DEEPSPEED", "ZeRO stage 3", "--deepspeed"), {}, False),  # its JSON says; Trainer reads it
    ],
)  # fmt: skip
def test_zero3_is_refused_before_work_unless_its_save_gathers_the_weights(asked, environ, refused):
    reason = zero3_save_problem(asked, environ)
    assert (reason is not None) == refused
    if refused:
        assert "zero3_save_16bit_model: true" in reason and "\n" not in reason


def _image_cls_top_stage_run(out):
    """(start weights, output dir, argv) of a 3-step image_cls run of timm's test_resnet, top stage + head trained,
    from weights saved first, so a test can tell which tensors the run changed."""
    import timm
    from helpers import TIMM_MODEL, write_class_folders
    from safetensors.torch import save_file

    torch.manual_seed(0)
    start = out.with_name(out.name + "_start.safetensors")
    save_file(timm.create_model(TIMM_MODEL).state_dict(), str(start))
    root = write_class_folders(out.with_name(out.name + "_folders"), per_class=8)
    argv = ["--image_dir", str(root), "--model_name_or_path", TIMM_MODEL, "--image_size", "32"]
    argv += ["--pretrained_file", str(start), "--unfreeze-last", "1", "--output_dir", str(out), "--max_steps", "3"]
    argv += ["--per_device_train_batch_size", "4", "--save_strategy", "no", "--eval_strategy", "no"]
    return start, out, argv


@pytest.mark.slow
def test_zero3_on_two_cpu_ranks_image_cls_saves_the_gathered_timm_model(tmp_path):
    import timm
    from safetensors.torch import load_file

    start, out, argv = _image_cls_top_stage_run(tmp_path / "zero3_image")
    config = ROOT / "accelerate_configs" / "deepspeed_zero3_cpu.yaml"
    result = run([accelerate_bin(), "launch", "--config_file", str(config), str(ROOT / "recipes/image_cls.py"), *argv])
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    held = re.findall(r"rank (\d): model wrapped by DeepSpeedEngine; holds ([\d,]+) of ([\d,]+) parameter bytes", log)
    assert sorted(rank for rank, _, _ in held) == ["0", "1"]
    assert all(0.4 < int(mine.replace(",", "")) / int(full.replace(",", "")) < 0.6 for _, mine, full in held)
    # the save holds every full-shape tensor (not rank 0's empty ZeRO-3 placeholders); only the top stage + head moved
    before, after = load_file(str(start)), load_file(str(out / "model.safetensors"))
    assert set(after) == set(before) and all(after[n].shape == before[n].shape for n in before if n[:3] != "fc.")
    assert after["fc.weight"].shape[0] == 3  # the new 3-class head
    changed = {name for name in after if not torch.equal(after[name], before[name])}
    assert {n for n in changed if "running" not in n and "num_batches" not in n} - {
        n for n in after if n.startswith(("layer4.", "fc."))
    } == set()
    assert any(n.startswith("layer4.") for n in changed) and any(n.startswith("fc.") for n in changed)
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize(
    "env, cuda, cpu_flag, backend",
    [
        ({"LOCAL_RANK": "0", "WORLD_SIZE": "2", "ACCELERATE_USE_DEEPSPEED": "true"}, False, None, "gloo"),
        ({"LOCAL_RANK": "0", "WORLD_SIZE": "2", "ACCELERATE_USE_DEEPSPEED": "true"}, True, None, None),  # GPUs
        ({"LOCAL_RANK": "0", "WORLD_SIZE": "2"}, False, "true", None),  # DDP on CPU ranks, as before
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, False, None, None),  # one process: nothing to set
        ({"LOCAL_RANK": "0", "WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true"}, False, None, "gloo"),
        ({"LOCAL_RANK": "0", "WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true"}, True, None, None),  # GPUs
        # ACCELERATE_USE_CPU exported by hand (use_cpu: true in an FSDP config does not reach the ranks): DDP, refused
        ({"LOCAL_RANK": "0", "WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true", "ACCELERATE_USE_CPU": "true"}, False,
         "true", None),
    ],
)  # fmt: skip
def test_deepspeed_or_fsdp_on_cpu_ranks_keeps_cpu_off_and_defaults_to_gloo(monkeypatch, env, cuda, cpu_flag, backend):
    import os

    names = ("LOCAL_RANK", "WORLD_SIZE", "ACCELERATE_USE_CPU", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP")
    for key in (*names, "DS_ACCELERATOR"):
        monkeypatch.setenv(key, "")  # recorded, so whatever the functions set is undone after the test
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    use_cpu_ranks_without_gpu()
    assert os.environ.get("ACCELERATE_USE_CPU") == cpu_flag  # accelerate skips DeepSpeed when it is set
    assert launch_defaults({"ddp_backend", "seed"}) == ({"ddp_backend": backend} if backend else {})
    deepspeed = "ACCELERATE_USE_DEEPSPEED" in env
    assert os.environ.get("DS_ACCELERATOR") == ("cpu" if backend and deepspeed else None)
    assert launch_defaults({"seed"}) == {}  # a parser without TrainingArguments gets nothing


def assert_sharded_run_trained_the_top_2_of_4(out, tiny_bert_dir, class_weighted: bool) -> None:
    """A ZeRO/FSDP run of bert_cls --unfreeze-last 2 on the 4-layer BERT: gloo recorded, the weighted loss
    recorded when asked, exactly the top 2 layers + pooler + head changed (read through from_pretrained: ZeRO-3's
    consolidated save names LayerNorm parameters gamma/beta, which it maps back), and the save loads in pipeline()."""
    import json

    import yaml
    from transformers import AutoModelForSequenceClassification, pipeline

    assert yaml.safe_load((out / "run_args.yaml").read_text())["ddp_backend"] == "gloo"
    if class_weighted:  # the weighted loss is what trained (FtpeftTrainer.compute_loss under the engine)
        settings = json.loads((out / "resolved_settings.json").read_text())
        assert set(settings["class_weights"]["used"]) == {"neg", "pos"}, settings["class_weights"]
    before = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).state_dict()
    after = AutoModelForSequenceClassification.from_pretrained(out).state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    trained = ("bert.encoder.layer.2.", "bert.encoder.layer.3.", "bert.pooler.", "classifier.")
    assert changed == {name for name in before if name.startswith(trained)}
    assert pipeline("text-classification", model=str(out))("good film")[0]["label"] in ("neg", "pos")


@pytest.mark.slow
@pytest.mark.parametrize("stage, extra", [(2, []), (3, []), (2, ["--class_weights", "balanced"])])
def test_deepspeed_zero_on_two_cpu_ranks_trains_exactly_the_unfrozen_parameters(
    tiny_bert_dir, text_csv_dir, tmp_path, stage, extra
):
    out = tmp_path / f"zero{stage}"
    config = ROOT / "accelerate_configs" / f"deepspeed_zero{stage}_cpu.yaml"
    argv = tiny_args(tiny_bert_dir, text_csv_dir, out, "--unfreeze-last", "2", *extra)
    result = run([accelerate_bin(), "launch", "--config_file", str(config), str(ROOT / "recipes/bert_cls.py"), *argv])
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert f"engine: ZeRO stage {stage} wraps the model (accelerate: DEEPSPEED, 2 process(es))" in log
    assert "DistributedDataParallel" not in log
    held = re.findall(r"rank (\d): model wrapped by DeepSpeedEngine; holds ([\d,]+) of ([\d,]+) parameter bytes", log)
    assert sorted(rank for rank, _, _ in held) == ["0", "1"]
    for _, mine, full in held:  # ZeRO-2 keeps whole parameters on every rank; ZeRO-3 about half each
        share = int(mine.replace(",", "")) / int(full.replace(",", ""))
        assert share == 1.0 if stage == 2 else 0.4 < share < 0.6
    assert_sharded_run_trained_the_top_2_of_4(out, tiny_bert_dir, class_weighted=bool(extra))


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--class_weights", "balanced"]])
def test_fsdp_on_two_cpu_ranks_shards_and_trains_exactly_the_unfrozen_parameters(
    tiny_bert_dir, text_csv_dir, tmp_path, extra
):
    out = tmp_path / "fsdp"
    config = ROOT / "accelerate_configs" / "fsdp_cpu.yaml"
    argv = tiny_args(tiny_bert_dir, text_csv_dir, out, "--unfreeze-last", "2", *extra)
    result = run([accelerate_bin(), "launch", "--config_file", str(config), str(ROOT / "recipes/bert_cls.py"), *argv])
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "engine: FSDP version 2 wraps the model (accelerate: MULTI_GPU, 2 process(es))" in log
    assert "DistributedDataParallel" not in log
    # fully_shard makes the model class FSDP<class> and its parameters DTensors: each rank holds its local half
    held = re.findall(r"rank (\d): model wrapped by (\w+); holds ([\d,]+) of ([\d,]+) parameter bytes", log)
    assert sorted(rank for rank, *_ in held) == ["0", "1"]
    for _, wrapper, mine, full in held:
        assert wrapper == "FSDPBertForSequenceClassification"
        assert 0.4 < int(mine.replace(",", "")) / int(full.replace(",", "")) < 0.6
    assert_sharded_run_trained_the_top_2_of_4(out, tiny_bert_dir, class_weighted=bool(extra))


def test_the_launching_table_names_existing_tests():
    page = (ROOT / "docs" / "launching.md").read_text()
    launching = page.split("\n## ", 1)[0]  # the table at the top of the launching page
    assert "| where | command | tested where |" in launching
    rows = [line.split(" | ") for line in launching.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) >= 10 and all(row[2].startswith(("CI", "not tested")) for row in rows)  # says where, per row
    assert {"FSDP, GPUs", "FSDP, CPU ranks", "SLURM, N nodes", "several machines"} <= {row[0][2:] for row in rows}
    named = set(re.findall(r"tests/test_\w+\.py", launching))
    assert named and all((ROOT / path).is_file() for path in named)


# --- FSDP2 on 2 CPU ranks against one process (issue 15 item 2) ------------------------------------------------------

GROUPS_LINE = re.compile(r"rank (\d): optimizer groups: (.*)")
FSDP_CPU = ROOT / "accelerate_configs" / "fsdp_cpu.yaml"


def _launch_fsdp(script: str, argv: list[str], *launch_flags: str):
    config = ["--config_file", str(FSDP_CPU), *launch_flags]
    return run([accelerate_bin(), "launch", *config, str(ROOT / "recipes" / script), *argv], timeout=400)


# bert_cls as launched, plus: after training, every rank runs its sharded model on the same two sentences and prints
# the logits (FSDP2 gathers each layer's full parameters for the forward of every rank)
PROBE_SENTENCES = ["good film was great", "bad plot and boring actor"]
LOGITS_PROBE = f"""
import sys, torch
from ftpeft.core import lifecycle
from ftpeft.core.errors import run_cli
evaluate_and_report = lifecycle.evaluate_and_report
def probed(trainer, *args, **kwargs):
    inputs = trainer.processing_class({PROBE_SENTENCES!r}, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = trainer.model.eval()(**inputs).logits
    # one write per line: print() writes the text and its newline separately, so two ranks' lines could interleave
    sys.stdout.write(f"rank {{trainer.args.process_index}} logits {{logits.tolist()}}\\n")
    sys.stdout.flush()
    return evaluate_and_report(trainer, *args, **kwargs)
lifecycle.evaluate_and_report = probed
sys.path.insert(0, "recipes")
import bert_cls
run_cli(bert_cls.main)(sys.argv[1:])
"""


def _weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.slow
def test_fsdp_on_two_cpu_ranks_matches_one_process_and_resumes(tiny_bert_dir, text_csv_dir, tmp_path, caplog):
    import json
    import logging

    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    # dropout draws other masks on 2 ranks of 4 examples than on 1 process of 8: without it the runs must agree
    model_dir = tmp_path / "no_dropout"
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, **no_dropout).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(model_dir)
    common = ["--unfreeze-last", "2", "--weight_decay", "0.01", "--max_steps", "4", "--save_strategy", "steps"]
    common += ["--save_steps", "2", "--save_total_limit", "2"]

    def argv(out, batch, *extra):
        return tiny_args(model_dir, text_csv_dir, out, *common, "--per_device_train_batch_size", str(batch), *extra)

    sharded, single, resumed = tmp_path / "fsdp", tmp_path / "one", tmp_path / "resumed"
    result = _launch_fsdp("bert_cls.py", argv(sharded, 4))  # global batch 8
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "engine: FSDP version 2 wraps the model (accelerate: MULTI_GPU, 2 process(es))" in log
    with caplog.at_level(logging.WARNING, logger="ftpeft"):
        outcome = call_entry_point(load_recipe("bert_cls").main, argv(single, 8))
    assert outcome.code == 0, outcome.stderr[-3000:]

    # 1. the optimizer each rank steps (after accelerate prepared it) holds the groups of the one-process run
    groups = dict(GROUPS_LINE.findall(log))
    one_process = GROUPS_LINE.search(caplog.text).group(2)
    assert sorted(groups) == ["0", "1"] and groups["0"] == groups["1"] == one_process, (groups, one_process)
    lrs = [float(lr) for lr in re.findall(r"lr ([\d.e-]+)", one_process)]
    # the head's LR; the pooler's, then layer 4 and layer 3 at one and two steps of layer decay below it (the
    # recipe's defaults); each with and without weight decay
    head, top, decay = (TEXT_LR_DEFAULTS[k] for k in ("head_lr", "learning_rate", "layer_decay"))
    expected = [head, head, top, top, top * decay, top * decay, top * decay**2, top * decay**2]
    assert lrs == pytest.approx(expected, rel=2e-3)  # the log prints 3 significant digits

    # 5. the loss curve of 2 ranks x 4 matches 1 process x 8 (same seeded order; only the reduction order differs)
    def losses(out):
        state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
        return [(entry["step"], entry["loss"]) for entry in state["log_history"] if "loss" in entry]

    curve = losses(sharded)
    assert [step for step, _ in curve] == [1, 2, 3, 4]
    for (_, two), (_, one) in zip(curve, losses(single), strict=True):
        assert abs(two - one) <= 1e-4, (curve, losses(single))
    for name, tensor in _weights(single).items():
        torch.testing.assert_close(_weights(sharded)[name], tensor, rtol=1e-4, atol=1e-5, msg=name)

    # 2. the final save is a plain HF model; its test loss is the one the sharded ranks measured together
    saved = AutoModelForSequenceClassification.from_pretrained(sharded)
    tokenizer = AutoTokenizer.from_pretrained(sharded)
    measured = json.loads((sharded / "metrics.json").read_text())["test_loss"]
    assert abs(mean_test_loss(saved, tokenizer, text_csv_dir / "test.csv") - measured) < 1e-4
    assert pipeline("text-classification", model=str(sharded))("good film")[0]["label"] in ("neg", "pos")

    # 3. resume from the FSDP checkpoint of step 2: steps 3 and 4 again, ending at the uninterrupted run's weights
    resume = argv(resumed, 4, "--resume_from_checkpoint", str(sharded / "checkpoint-2"))
    launch = [accelerate_bin(), "launch", "--config_file", str(FSDP_CPU), "--no_python", sys.executable, "-c"]
    result = run([*launch, LOGITS_PROBE, *resume], timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    # 2. after training every rank gives the same logits for the same inputs, and so does the model it saved
    logits = dict(re.findall(r"rank (\d) logits (\[\[.*?\]\])", result.stdout))
    assert sorted(logits) == ["0", "1"] and logits["0"] == logits["1"], logits
    model = AutoModelForSequenceClassification.from_pretrained(resumed).eval()
    with torch.no_grad():
        reloaded = model(**tokenizer(PROBE_SENTENCES, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(torch.tensor(json.loads(logits["0"])), reloaded, rtol=1e-5, atol=1e-5)
    assert losses(resumed) == curve[:2] + losses(resumed)[2:] and [s for s, _ in losses(resumed)] == [1, 2, 3, 4]
    for (_, again), (_, before) in zip(losses(resumed)[2:], curve[2:], strict=True):
        assert abs(again - before) <= 1e-5
    for name, tensor in _weights(sharded).items():
        torch.testing.assert_close(_weights(resumed)[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_fsdp_on_two_cpu_ranks_lora_with_its_head_round_trips(tiny_bert_dir, text_csv_dir, tmp_path):
    import json

    from peft import AutoPeftModelForSequenceClassification
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "lora"
    result = _launch_fsdp("bert_cls.py", tiny_args(tiny_bert_dir, text_csv_dir, out, "--use_peft", "--max_steps", "3"))
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    held = re.findall(r"rank (\d): model wrapped by (\w+); holds ([\d,]+) of ([\d,]+) parameter bytes", log)
    assert sorted(rank for rank, *_ in held) == ["0", "1"]
    assert all(0.4 < int(mine.replace(",", "")) / int(full.replace(",", "")) < 0.6 for *_, mine, full in held)
    groups = dict(GROUPS_LINE.findall(log))
    assert sorted(groups) == ["0", "1"] and groups["0"] == groups["1"]
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert any("lora_B" in name and tensor.abs().sum() > 0 for name, tensor in adapter.items())  # adapters trained
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).state_dict()
    head = [name for name in adapter if name.startswith("base_model.model.classifier.")]
    assert head and all(not torch.equal(adapter[n], base[n.split("base_model.model.", 1)[1]]) for n in head)
    reloaded = AutoPeftModelForSequenceClassification.from_pretrained(out)  # the card's snippet
    reloaded.config.id2label = dict(enumerate(json.loads((out / "label_names.json").read_text())))
    measured = json.loads((out / "metrics.json").read_text())["test_loss"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert abs(mean_test_loss(reloaded, tokenizer, text_csv_dir / "test.csv") - measured) < 1e-4


@pytest.mark.slow
def test_fsdp_on_two_cpu_ranks_image_cls_shards_timm_blocks_and_keeps_frozen_batchnorm(tmp_path):
    import timm
    from safetensors.torch import load_file

    start, out, argv = _image_cls_top_stage_run(tmp_path / "fsdp_image")
    # the wrap policy names timm's ResNet blocks instead of fsdp_cpu.yaml's BertLayer
    result = _launch_fsdp("image_cls.py", argv, "--fsdp_transformer_layer_cls_to_wrap", "BasicBlock,Bottleneck")
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    held = re.findall(r"rank (\d): model wrapped by (\w+); holds ([\d,]+) of ([\d,]+) parameter bytes", log)
    assert sorted(rank for rank, *_ in held) == ["0", "1"]
    for _, wrapper, mine, full in held:
        assert wrapper == "FSDPResNet" and 0.4 < int(mine.replace(",", "")) / int(full.replace(",", "")) < 0.6
    before, after = load_file(str(start)), load_file(str(out / "model.safetensors"))
    changed = {name for name in after if not name.startswith("fc.") and not torch.equal(after[name], before[name])}
    trained = {name for name in changed if name.startswith("layer4.") and "running" not in name}
    assert trained and changed - trained <= {n for n in after if n.startswith("layer4.")}  # stats of trained BN move
    assert not any(name.startswith(("conv1", "bn1", "layer1", "layer2", "layer3")) for name in changed)  # frozen BN too
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.slow
def test_fsdp_cpu_config_as_shipped_refuses_image_cls_in_one_line(tmp_path):
    """fsdp_cpu.yaml wraps BertLayer; a timm ResNet has none: one line naming its blocks, exit 2, no output dir."""
    from helpers import TIMM_MODEL, write_class_folders

    root = write_class_folders(tmp_path / "folders", per_class=8)
    out = tmp_path / "fsdp_image"
    argv = ["--image_dir", str(root), "--model_name_or_path", TIMM_MODEL, "--image_size", "32", "--unfreeze-last",
            "1", "--output_dir", str(out), "--max_steps", "2", "--save_strategy", "no", "--eval_strategy", "no"]  # fmt: skip
    result = _launch_fsdp("image_cls.py", argv)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2, result.stderr[-3000:]  # one line from each rank
    assert all("fsdp_transformer_layer_cls_to_wrap names ['BertLayer']" in e and "BasicBlock" in e for e in errors)
    # the launcher exits 1 with its own ChildFailedError report of each rank's usage exit code
    assert result.returncode != 0 and "exitcode  : 2" in result.stderr
    assert "Could not find the transformer layer class" not in result.stderr  # refused before accelerate wraps
    assert not out.exists()


class BasicBlock(torch.nn.Module):  # the name timm's ResNets give their repeated blocks
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Linear(2, 2)


FSDP_LAUNCH = {"ACCELERATE_USE_FSDP": "true", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP"}


@pytest.mark.parametrize(
    ("environ", "refused"),
    [
        ({**FSDP_LAUNCH, "FSDP_TRANSFORMER_CLS_TO_WRAP": "BertLayer"}, True),  # fsdp_cpu.yaml on a timm model
        ({**FSDP_LAUNCH, "FSDP_TRANSFORMER_CLS_TO_WRAP": "BasicBlock"}, False),
        ({**FSDP_LAUNCH, "FSDP_TRANSFORMER_CLS_TO_WRAP": "BasicBlock,BertLayer"}, True),
        ({"FSDP_TRANSFORMER_CLS_TO_WRAP": "BertLayer"}, False),  # not an FSDP launch
    ],
)
def test_fsdp_wrap_classes_the_model_lacks_are_refused_naming_its_blocks(environ, refused):
    from ftpeft.core.engine import fsdp_wrap_classes_missing

    model = torch.nn.Sequential(BasicBlock(), BasicBlock())
    problem = fsdp_wrap_classes_missing(model, environ)
    assert (problem is not None) == refused
    if refused:
        assert "['BertLayer']" in problem and "BasicBlock" in problem
