"""LP-FT and gradual unfreezing: the stage plan, the flag rules, and -- from the checksums every run records in
unfreeze_schedule.json -- that each group changes exactly from its stage on (1 process, and 2 DDP ranks)."""

from __future__ import annotations

import json

import pytest
from helpers import (
    ROOT,
    TEXT_RUN_FILES,
    TIMM_ARGS,
    accelerate_bin,
    load_recipe,
    make_tiny_text_model,
    make_wordpiece_tokenizer,
    run,
    tiny_args,
    tiny_model,
    write_glove,
    write_kaggle_layout,
    write_knowledge_dataset,
)

from ftpeft.core.errors import FtpeftError
from ftpeft.core.freezing import layer_map, unfreeze_last
from ftpeft.tuning.args import TuningArguments
from ftpeft.tuning.schedules import (
    SCHEDULE_FILE,
    default_unfreeze_every,
    gradual_stages,
    lp_ft_stages,
    unfreeze_order,
)

BERT_GROUPS = {"embeddings", "layer_1", "layer_2", "layer_3", "layer_4", "top", "head"}


def changed(before: dict, after: dict) -> set[str]:
    return {group for group in before["checksums"] if before["checksums"][group] != after["checksums"][group]}


def snapshots(record: dict, event: str) -> list[dict]:
    return [snap for snap in record["snapshots"] if snap["event"] == event]


# --- the plan ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "k,train_embeddings,labels",
    [
        ("2", False, ["layer_4", "layer_3"]),
        ("1", True, ["layer_4", "embeddings"]),
        ("all", False, ["layer_4", "layer_3", "layer_2", "layer_1", "embeddings"]),
    ],
)
def test_groups_unfreeze_top_first_and_only_what_the_run_trains(k, train_embeddings, labels):
    model = tiny_model("bert")
    layers = layer_map(model)
    unfreeze_last(model, None if k == "all" else int(k), train_embeddings, layers)
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]
    order = unfreeze_order(layers, trainable)
    assert [group.label for group in order] == labels
    held = {name for group in order for name in group.params}
    # every trainable parameter waits for its stage but the readout: the head and the pooler feeding it
    assert held == set(trainable) - set(layers.head) - set(layers.top)
    assert gradual_stages(order, every=5)[2].start_step == 10
    assert [stage.start_step for stage in lp_ft_stages(order, max_steps=9, lp_fraction=0.5)] == [0, 4]
    assert [stage.start_step for stage in lp_ft_stages(order, max_steps=2, lp_fraction=0.9)] == [0, 1]


def test_gradual_pacing_is_one_epoch_per_group_unless_the_run_is_shorter():
    assert default_unfreeze_every(groups=2, epoch_steps=4, max_steps=12) == (4, "one epoch per group")
    assert default_unfreeze_every(groups=2, epoch_steps=4, max_steps=20)[0] == 4  # later epochs train all groups
    every, why = default_unfreeze_every(groups=2, epoch_steps=225, max_steps=450)  # 2 epochs, 3 stages
    assert every == 150 and "3 equal stages" in why


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"lp_ft": True, "gradual_unfreeze": True}, "cannot be combined"),
        ({"lp_ft": True, "unfreeze_last": "0"}, "--lp_ft needs --unfreeze_last k >= 1"),
        ({"gradual_unfreeze": True, "use_peft": True}, "--gradual_unfreeze .* --use_peft"),
        ({"unfreeze_every": 3}, "--unfreeze_every only makes sense with --gradual_unfreeze"),
        ({"lp_ft": True, "lp_fraction": 1.0}, r"--lp_fraction must be in \(0, 1\)"),
    ],
)
def test_flag_combinations_are_refused_naming_the_flag(settings, message):
    with pytest.raises(FtpeftError, match=message):
        TuningArguments(**{"unfreeze_last": "2", **settings})


# --- one process ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cache", [False, True], ids=["uncached", "cache_frozen"])
def test_lp_ft_keeps_the_backbone_bit_identical_until_the_switch(tiny_bert_dir, text_csv_dir, tmp_path, cache):
    out = tmp_path / "lpft"
    flags = ["--cache_frozen", "--activation_cache_dir", str(tmp_path / "cache")] if cache else []
    bert_cls = load_recipe("bert_cls")
    bert_cls.main(
        tiny_args(tiny_bert_dir, text_csv_dir, out, "--unfreeze_last", "2", "--lp_ft", "--max_steps", "4", *flags)
    )
    record = json.loads((out / SCHEDULE_FILE).read_text())
    [begin], [switch], [end] = (snapshots(record, event) for event in ("train_begin", "unfreeze", "train_end"))
    assert (begin["step"], switch["step"], end["step"]) == (0, 2, 4)
    assert changed(begin, switch) == {"head", "top"}  # the probe: only the readout (head + pooler) moved
    assert changed(switch, end) == {"head", "top", "layer_3", "layer_4"}  # then --unfreeze_last 2 trains
    assert switch["trainable"] == ["head", "top", "layer_4", "layer_3"]
    assert {p.name for p in out.iterdir()} == TEXT_RUN_FILES | {SCHEDULE_FILE}
    card = (out / "README.md").read_text()
    assert "LP-FT (the readout, head + top, alone for 2 steps; then --unfreeze_last 2 from step 2 of 4" in card
    assert json.loads((out / "freeze_report.json").read_text())["trainable_layers"] == [3, 4]


def test_held_groups_get_no_update_no_decay_and_keep_their_layer_decay_lr(tiny_bert_dir, tmp_path):
    """Library use: an FtpeftTrainer with weight decay; held groups sit in the optimizer from step 0 with their
    layer-decay LR, yet AdamW leaves them (no decay, no moments) until their stage."""
    from datasets import Dataset
    from helpers import make_rows
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        TrainerCallback,
        TrainingArguments,
    )

    from ftpeft.core.trainer import FtpeftTrainer
    from ftpeft.tuning.apply import apply_tuning
    from ftpeft.tuning.schedules import staged_unfreezing

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    rows = make_rows(32, seed=0, string_labels=False)
    data = Dataset.from_list(rows).map(lambda row: tokenizer(row["text"]), remove_columns=["text"])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    tuning_args = TuningArguments(unfreeze_last="2", gradual_unfreeze=True, unfreeze_every=2, layer_decay=0.5)
    tuning = apply_tuning(model, tuning_args, ["classifier.weight", "classifier.bias"])
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=8, learning_rate=1e-2, weight_decay=0.5,
        save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = FtpeftTrainer(
        model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer),
        layer_decay=0.5, layers=tuning.layers,
    )  # fmt: skip
    unfreezing = staged_unfreezing(tuning_args, tuning)
    trainer.add_callback(unfreezing)
    layer_3 = model.bert.encoder.layer[2].output.dense.weight
    layer_4 = model.bert.encoder.layer[3].output.dense.weight
    seen = []  # after each optimizer step: has AdamW touched a layer_4 / a layer_3 weight (unfrozen at step 2 / 4)?

    class OptimizerStateProbe(TrainerCallback):
        def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            seen.append((layer_4 in optimizer.state, layer_3 in optimizer.state))

    trainer.add_callback(OptimizerStateProbe())
    trainer.train()
    lrs = {id(p): group["initial_lr"] for group in trainer.optimizer.param_groups for p in group["params"]}
    assert lrs[id(layer_3)] == pytest.approx(1e-2 * 0.5**2)  # in the optimizer from the start, decayed 2 layers down
    assert seen == [(False, False), (False, False), (True, False), (True, False), (True, True)]
    [begin] = snapshots(unfreezing.record(), "train_begin")
    unfreezes = snapshots(unfreezing.record(), "unfreeze")
    assert [snap["step"] for snap in unfreezes] == [2, 4]
    assert changed(begin, unfreezes[0]) == {"head", "top"}  # weight decay 0.5 would have moved any held weight
    assert changed(unfreezes[0], unfreezes[1]) == {"head", "top", "layer_4"}


def test_gradual_unfreezing_of_timm_stages_keeps_held_batchnorm_statistics(tmp_path):
    csv, images = write_kaggle_layout(tmp_path / "kaggle")
    out = tmp_path / "image"
    load_recipe("image_cls").main(
        ["--labels_csv", str(csv), "--image_dir", str(images), *TIMM_ARGS, "--output_dir", str(out), "--max_steps", "3",
         "--per_device_train_batch_size", "4", "--save_strategy", "no", "--eval_strategy", "no",
         "--warmup_steps", "0", "--unfreeze_last", "2", "--gradual_unfreeze", "--unfreeze_every", "1"]
    )  # fmt: skip
    record = json.loads((out / SCHEDULE_FILE).read_text())
    [begin], [end] = snapshots(record, "train_begin"), snapshots(record, "train_end")
    first, second = snapshots(record, "unfreeze")
    # checksums cover BatchNorm running statistics too: a held stage's never moved (eval mode while held)
    assert changed(begin, first) == {"head"}
    assert changed(first, second) == {"head", "layer_4"}
    assert changed(second, end) == {"head", "layer_4", "layer_3"}
    assert "gradual unfreezing up to --unfreeze_last 2" in (out / "README.md").read_text()


def test_knowledge_run_trains_fusion_from_the_start_and_the_encoder_after_the_probe(tmp_path):
    model_dir = make_tiny_text_model(
        tmp_path / "kb_bert", "bert", num_layers=2, tokenizer=make_wordpiece_tokenizer(), head=False
    )
    out = tmp_path / "knowledge"
    load_recipe("knowledge_cls").main(
        ["--model_name_or_path", model_dir, "--train_file", str(write_knowledge_dataset(tmp_path / "train.jsonl")),
         "--knowledge_file", str(write_glove(tmp_path / "kb.txt")), "--inject", "concat", "--output_dir", str(out),
         "--max_steps", "4", "--per_device_train_batch_size", "4", "--validation_split_percentage", "25",
         "--eval_strategy", "no", "--save_strategy", "no", "--use_cpu", "true", "--unfreeze_last", "1", "--lp_ft"]
    )  # fmt: skip
    record = json.loads((out / SCHEDULE_FILE).read_text())
    [begin], [switch], [end] = (snapshots(record, event) for event in ("train_begin", "unfreeze", "train_end"))
    assert changed(begin, switch) == {"head", "top"}  # the pooler, and fusion + classifier (outside the encoder)
    assert changed(switch, end) == {"head", "layer_2", "top"}
    assert "LP-FT (the readout, head + top, alone for 2 steps" in (out / "README.md").read_text()


# --- two DDP ranks ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_gradual_unfreezing_on_two_ddp_ranks(tiny_bert_dir, text_csv_dir, tmp_path):
    """3 epochs, --unfreeze_last 2 of 4 layers: the head (+ pooler) from epoch 0, layer 4 from epoch 1, layer 3 from
    epoch 2, layers 1-2 and the embeddings never; both ranks hold identical weights at every snapshot."""
    out = tmp_path / "ddp"
    result = run(
        [
            accelerate_bin(), "launch", "--config_file", str(ROOT / "accelerate_configs/cpu_ddp.yaml"),
            str(ROOT / "recipes/bert_cls.py"),
            *tiny_args(tiny_bert_dir, text_csv_dir, out, "--unfreeze_last", "2", "--gradual_unfreeze",
                       "--max_steps", "-1", "--num_train_epochs", "3"),
        ],
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / SCHEDULE_FILE).read_text())
    assert record["steps_per_epoch"] == 4  # 64 rows / 2 ranks / batch 8
    assert [(s["start_step"], s["unfreezes"]) for s in record["stages"]] == [
        (0, ["head", "top"]), (4, ["layer_4"]), (8, ["layer_3"])
    ]  # fmt: skip
    [begin] = snapshots(record, "train_begin")
    epochs = snapshots(record, "epoch_end")
    assert [snap["epoch"] for snap in epochs] == [1, 2, 3]
    assert set(begin["checksums"]) == BERT_GROUPS
    assert changed(begin, epochs[0]) == {"head", "top"}
    assert changed(epochs[0], epochs[1]) == {"head", "top", "layer_4"}
    assert changed(epochs[1], epochs[2]) == {"head", "top", "layer_4", "layer_3"}
    assert all(snap["ranks"] == 2 and snap["ranks_identical"] for snap in record["snapshots"])
    assert (
        "gradual_unfreeze: step 4 (epoch 1.00): unfreezing layer_4; training now: head, top, layer_4" in result.stderr
    )
    assert "layer_3 at step 8, epoch 2.00" in (out / "README.md").read_text()


# --- the benchmark ----------------------------------------------------------------------------------------------


def _lp_ft_benchmark():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import lp_ft_gradual

    return lp_ft_gradual


def test_benchmark_pairs_runs_by_seed_and_decides_on_validation_only(tmp_path):
    bench = _lp_ft_benchmark()
    shift = {"--unfreeze-last 2 --lp_ft, 1 epoch": (0.03, -0.02)}  # better on validation, worse on test: rigged
    runs = [
        {"case": case.name, "seed": seed, "val_accuracy": 0.85 + shift.get(case.name, (0, 0))[0] + (seed - 42) / 100,
         "test_accuracy": 0.86 + shift.get(case.name, (0, 0))[1], "train_runtime_s": 10.0, "trainable_params": 7,
         "card_tuning": "--unfreeze_last 2"}
        for seed in (43, 42) for case in bench.cases()
    ]  # fmt: skip
    summary = bench.summarise(runs)
    lp_ft = summary["comparisons"][0]
    assert lp_ft["seeds"] == [42, 43] and lp_ft["val_points"] == pytest.approx([3.0, 3.0])
    assert lp_ft["test_points"] == pytest.approx([-2.0, -2.0])
    assert bench.verdict(lp_ft, bench.validation_noise_points(200)).startswith("helps on validation")
    assert bench.verdict(summary["comparisons"][1], 2.1).startswith("no difference beyond noise")
    bench.write_table(summary, "cmd", 200, tmp_path / "table.md")
    assert (
        "| --unfreeze-last 2 --lp_ft, 1 epoch | 0.880, 0.890 | 0.885 ± 0.007 | 0.840, 0.840 |"
        in (tmp_path / "table.md").read_text()
    )


@pytest.mark.slow
def test_quick_lp_ft_gradual_benchmark_writes_its_tables(tmp_path):
    from transformers import AutoTokenizer

    from ftpeft.text.modeling import default_text_model_path

    bench = _lp_ft_benchmark()
    # the demo tweets need a real vocabulary: a 4-layer tiny BERT over MiniLM's tokenizer
    model_dir = make_tiny_text_model(
        tmp_path / "model", tokenizer=AutoTokenizer.from_pretrained(default_text_model_path())
    )
    path = bench.main(["--quick", "--model_name_or_path", model_dir, "--results_dir", str(tmp_path / "results")])
    data = json.loads((tmp_path / "results" / "lp_ft_gradual_quick.json").read_text())
    assert [row["case"] for row in data["rows"]] == [case.name for case in bench.cases()]
    assert len(data["comparisons"]) == len(bench.COMPARISONS)
    runs = (tmp_path / "results" / "lp_ft_gradual_quick_runs.jsonl").read_text().splitlines()
    assert len(runs) == len(bench.cases())
    assert "LP-FT (the readout" in path.read_text() and "gradual unfreezing up to" in path.read_text()
    bench.main(["--quick", "--model_name_or_path", model_dir, "--results_dir", str(tmp_path / "results")])
    assert len((tmp_path / "results" / "lp_ft_gradual_quick_runs.jsonl").read_text().splitlines()) == len(runs)
