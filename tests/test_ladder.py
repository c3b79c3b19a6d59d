"""The strategy ladder on a tiny BERT: schema, resume, budget, choice on validation only, refused rungs."""

import json
import sys
import time

import pytest
from helpers import ROOT, TIMM_ARGS, accelerate_bin, load_recipe, run, write_class_folders

from ftpeft.core.errors import FtpeftError
from ftpeft.ladder.args import LadderArguments
from ftpeft.ladder.report import RungRow, choose, default_tolerance
from ftpeft.ladder.run import infer_modality, strip_flags
from ftpeft.ladder.rungs import build_rungs, near_full_rungs

ladder = load_recipe("ladder")
FAST = ["--max_steps", "6", "--per_device_train_batch_size", "8", "--eval_strategy", "no", "--save_strategy", "no"]


def ladder_args(model_dir, data_dir, out, *extra):
    return [
        "--model_name_or_path", str(model_dir), "--train_file", str(data_dir / "train.csv"),
        "--validation_file", str(data_dir / "validation.csv"), "--test_file", str(data_dir / "test.csv"),
        "--output_dir", str(out), *FAST, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def finished_ladder(tiny_bert_dir, text_csv_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ladder") / "out"
    argv = ladder_args(tiny_bert_dir, text_csv_dir, out, "--time_budget", "10m", "--lora_target_modules", "nope")
    return argv, out, ladder.main(argv)


@pytest.mark.slow
def test_the_ladder_completes_with_the_schema_and_its_files(finished_ladder):
    _, out, result = finished_ladder
    assert {"ladder.md", "ladder.json", "ladder.png", "transfer_curve.png", "transfer_curve.md"} <= {
        p.name for p in out.iterdir()
    }
    names = [row["name"] for row in result["rungs"]]
    assert names == ["probe_head", "head_only", "last_k_small", "last_k_large", "lora", "full"]
    for row in result["rungs"]:
        assert {"name", "val_accuracy", "test_accuracy", "train_seconds", "trainable_params", "command"} <= set(row)
    done = [row for row in result["rungs"] if row["status"] == "done"]
    assert result["recommended"] in {row["name"] for row in done}
    assert 0.005 <= result["tolerance"] < 0.2
    full = next(row for row in result["rungs"] if row["name"] == "full")
    assert (
        full["command"].startswith("accelerate launch recipes/bert_cls.py ")
        and "--unfreeze_last all" in full["command"]
    )
    assert full["trainable_params"] == 45_654  # the whole tiny BERT + head
    head = next(row for row in result["rungs"] if row["name"] == "head_only")
    assert head["trainable_params"] < full["trainable_params"] / 10


@pytest.mark.slow
def test_a_refused_rung_is_a_row_with_its_reason(finished_ladder):
    _, _, result = finished_ladder
    lora = next(row for row in result["rungs"] if row["name"] == "lora")
    assert lora["status"] == "failed" and "--lora_target_modules ['nope'] match no module" in lora["reason"]


@pytest.mark.slow
def test_the_probe_head_command_reproduces_its_row(finished_ladder):
    _, out, result = finished_ladder
    probe_head = next(row for row in result["rungs"] if row["name"] == "probe_head")
    done = run(["bash", "-c", probe_head["command"].replace("python ", f"{sys.executable} ")], timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "probe_head" / "metrics.json").read_text())
    # the same layer, pooling and C: train_head.py's regression scores what the probe's did
    assert metrics["eval_accuracy"] == pytest.approx(probe_head["val_accuracy"], abs=1e-9)
    assert metrics["test_accuracy"] == pytest.approx(probe_head["test_accuracy"], abs=1e-9)


@pytest.mark.slow
def test_the_same_command_resumes_and_a_killed_rung_is_run_again(finished_ladder):
    argv, out, first = finished_ladder
    results = sorted((out / "rungs").glob("*.json"))
    stamps = {p.name: p.stat().st_mtime_ns for p in results}
    (out / "rungs" / "head_only-seed42.json").unlink()  # as if the ladder was killed during head_only
    again = ladder.main(argv)
    changed = {p.name for p in sorted((out / "rungs").glob("*.json")) if p.stat().st_mtime_ns != stamps.get(p.name)}
    assert changed == {"head_only-seed42.json"}
    assert [r["val_accuracy"] for r in again["rungs"]] == [r["val_accuracy"] for r in first["rungs"]]
    with pytest.raises(FtpeftError, match="holds a ladder run with other arguments"):
        ladder.main([*argv, "--seeds", "2"])


@pytest.mark.slow
def test_an_image_ladder_probes_every_stage_and_trains_its_rungs(tmp_path):
    root = write_class_folders(tmp_path / "images", per_class=12)
    out = tmp_path / "out"
    result = ladder.main(
        ["--image_dir", str(root), *TIMM_ARGS, "--output_dir", str(out), *FAST, "--time_budget", "10m"]
    )
    assert result["modality"] == "image"
    status = {row["name"]: row["status"] for row in result["rungs"]}
    assert status == {"probe_head": "done", "head_only": "done", "last_k_small": "done", "last_k_large": "done",
                      "lora": "failed", "full": "done"}  # fmt: skip
    lora = next(row for row in result["rungs"] if row["name"] == "lora")
    assert lora["reason"].startswith("--use_peft: not supported by image_cls")  # refused in one line, not a crash
    curve = (out / "transfer_curve.md").read_text()
    assert sum(line.startswith("| ") and "| stage " in line for line in curve.splitlines()) == 5  # every stage
    full = next(row for row in result["rungs"] if row["name"] == "full")
    assert full["command"].startswith("accelerate launch recipes/image_cls.py ") and "--unfreeze_last all" in full[
        "command"]  # fmt: skip
    head = next(row for row in result["rungs"] if row["name"] == "head_only")
    assert head["trainable_params"] < full["trainable_params"] / 10


@pytest.mark.slow
def test_an_image_ladder_skips_a_near_full_last_k_rung_with_its_share_and_runs_the_others(tmp_path, monkeypatch):
    import ftpeft.core.freezing

    # test_resnet's top stages hold 72-98% of its weights; give its depths a CNN's steeper shares (Lite0's: 99.9%)
    shares = [0.01, 0.6, 0.995, 0.999, 1.0]
    monkeypatch.setattr(ftpeft.core.freezing, "trained_shares", lambda model, layers=None: shares)
    root = write_class_folders(tmp_path / "images", per_class=12)
    out = tmp_path / "out"
    argv = ["--image_dir", str(root), *TIMM_ARGS, "--output_dir", str(out), *FAST, "--time_budget", "10m"]
    result = ladder.main(argv)  # the default rungs: a near-full last-k rung named in --rungs would run
    rows = {row["name"]: row for row in result["rungs"]}
    depth = dict(zip(("last_k_small", "last_k_large"), result["last_k"]))
    skipped = {name for name, k in depth.items() if shares[k] >= 0.99}
    assert "last_k_large" in skipped  # the probe's k: small is 1 or 2, large at least 2
    for name in skipped:
        assert rows[name]["status"] == "skipped" and not (out / "rungs" / f"{name}-seed42").exists()
        assert rows[name]["reason"] == (
            f"--unfreeze_last {depth[name]} trains {100 * shares[depth[name]]:.1f}% of the parameters: "
            "the full rung is this run"
        )
    ran = {"probe_head", "head_only", "full", *(set(depth) - skipped)}
    assert {name: row["status"] for name, row in rows.items() if name in ran} == dict.fromkeys(ran, "done")
    assert result["recommended"] not in skipped and "skipped: --unfreeze_last" in (out / "ladder.md").read_text()


def test_the_probe_pass_fills_the_caches_that_the_frozen_prefix_rungs_train_from(
    tiny_bert_dir, text_csv_dir, tmp_path, monkeypatch
):
    import shlex

    import numpy as np

    from ftpeft.cache import prefix

    builds = []
    build_store = prefix.build_store
    monkeypatch.setattr(prefix, "build_store", lambda *a, **kw: builds.append(a[1]) or build_store(*a, **kw))
    cache_root = tmp_path / "cache"
    rungs = ["--rungs", "probe_head", "head_only", "last_k_small", "full"]
    argv = ladder_args(tiny_bert_dir, text_csv_dir, tmp_path / "out", *rungs, "--activation_cache_dir", str(cache_root))
    result = ladder.main(argv)
    by_name = {row["name"]: row for row in result["rungs"]}
    assert all(row["status"] == "done" for row in result["rungs"])
    # the frozen-prefix rungs trained with --cache_frozen from the probe's stores: no rung built one
    for name in ("head_only", "last_k_small"):  # float32: the run scores validation and test from the cache too
        assert "--cache_frozen --cache_dtype float32" in by_name[name]["command"]
    assert "--cache_frozen" not in by_name["full"]["command"] and builds == []
    last_k_argv = shlex.split(by_name["last_k_small"]["command"])
    k = int(last_k_argv[last_k_argv.index("--unfreeze_last") + 1])
    # train, validation and test for each of the two depths trained (k = 0 and the small k); the others are deleted
    stores = {p.name: np.load(p / "states.npy") for p in cache_root.iterdir()}
    assert len(stores) == 6
    # the printed command, run afresh, builds exactly the stores the probe wrote: the same keys and states
    for store in cache_root.iterdir():
        store.rename(tmp_path / store.name)
    args = last_k_argv[3:]
    load_recipe("bert_cls").main([*args, "--overwrite_output_dir"])
    assert sorted(builds) == [k, k, k]
    for name, states in ((p.name, np.load(p / "states.npy")) for p in cache_root.iterdir()):
        np.testing.assert_array_equal(states, stores[name])


@pytest.mark.parametrize("classes, features, solver", [(2, 384, "newton-cholesky"), (5, 40, "newton-cholesky"),
                                                       (10, 1280, "lbfgs")])  # fmt: skip
def test_the_probe_solves_the_same_regression_by_the_faster_solver(classes, features, solver):
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from ftpeft.ladder.probe import fit_layer, probe_solver

    assert probe_solver(features, classes) == solver
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(classes, 16))
    y = rng.integers(0, classes, 600)
    x = np.hstack([centres[y] + rng.normal(size=(600, 16)), rng.normal(size=(600, 24))])  # 16 informative dims
    train, val = (x[:400], y[:400]), (x[400:], y[400:])
    val_accuracy, *_ = fit_layer(train, val, None, seed=0)
    scaler = StandardScaler().fit(train[0])
    reference = LogisticRegression(tol=1e-10, max_iter=10_000).fit(scaler.transform(train[0]), train[1])
    assert val_accuracy == pytest.approx(np.mean(reference.predict(scaler.transform(val[0])) == val[1]), abs=0.01)


@pytest.mark.parametrize(
    "cached, scored_from_cache, cache_built, forward_rows",
    [
        (False, False, False, 100 * 1.5 + 10 + 30),  # forward + backward through the top quarter, val, then val + test
        (True, False, False, 110 + 100 * 3 * 0.25 + 10 * 0.25 + 30),  # build train + val, the top only, real scoring
        (True, False, True, 100 * 3 * 0.25 + 10 * 0.25 + 30),  # the probe built it
        (True, True, True, 100 * 3 * 0.25 + 10 * 0.25 + 30 * 0.25),  # and validation + test are scored from it
        (True, True, False, 130 + 100 * 3 * 0.25 + 10 * 0.25 + 30 * 0.25),  # building test too
    ],
)
def test_a_rungs_estimate_counts_the_forward_passes_it_will_run(cached, scored_from_cache, cache_built, forward_rows):
    from ftpeft.ladder.rungs import Rung, estimate_seconds

    rung = Rung("last_k", [], "top 1 of 4", 0.25, 1, cached, scored_from_cache)
    rows = {"train": 100, "validation": 10, "test": 20}
    assert estimate_seconds(rung, 0.5, rows, 1.0, cache_built) == pytest.approx(0.5 * forward_rows)


def test_the_budget_skips_rungs_and_says_why(tiny_bert_dir, text_csv_dir, tmp_path):
    start = time.perf_counter()
    result = ladder.main(ladder_args(tiny_bert_dir, text_csv_dir, tmp_path / "out", "--time_budget", "0.01s"))
    trained = [row for row in result["rungs"] if row["name"] != "probe_head"]
    assert trained and all(row["status"] == "skipped" for row in trained)
    assert all(row["reason"].startswith("estimated ") and "s left" in row["reason"] for row in trained)
    assert result["recommended"] == "probe_head"  # the probe itself always runs
    assert time.perf_counter() - start < 60


def row(name, val, test, seconds):
    return RungRow(name, name, "cmd", "done", val_accuracy=[val], val_macro_f1=[val], test_accuracy=[test],
                   train_seconds=[seconds])  # fmt: skip


@pytest.mark.parametrize(
    "rows,expected",
    [
        # test prefers 'full' by far; validation says 'last_k' is as good and cheaper: validation wins
        ([row("full", 0.90, 0.99, 100), row("last_k", 0.899, 0.60, 40), row("head", 0.80, 0.95, 5)], "last_k"),
        # outside the tolerance, the better validation score wins whatever its cost
        ([row("full", 0.95, 0.50, 100), row("head", 0.80, 0.99, 5)], "full"),
    ],
)
def test_selection_reads_validation_only(rows, expected):
    chosen, tolerance = choose(rows, "accuracy", n_val=4000, tolerance=None)
    assert chosen.name == expected and tolerance == pytest.approx(
        default_tolerance(max(r.score("accuracy") for r in rows), 4000)
    )


@pytest.mark.parametrize(
    "argv,modality",
    [
        (["--train_file", "x.csv"], "text"),
        (["--image_dir", "imgs"], "image"),
        (["--model_name_or_path", "resnet50"], "image"),
        (["--model_name_or_path", "bert-base-uncased"], "text"),
        (["--modality", "image"], "image"),
    ],
)
def test_modality_is_inferred_from_the_flags(argv, modality):
    assert infer_modality(argv) == modality


def test_strip_flags_removes_flags_and_their_values():
    argv = ["--rungs", "lora", "full", "--seeds=2", "--learning_rate", "1e-3", "--output_dir", "o"]
    assert strip_flags(argv, ("rungs", "seeds", "output_dir")) == ["--learning_rate", "1e-3"]


@pytest.mark.slow
def test_the_ladder_runs_on_two_ddp_ranks(tiny_bert_dir, text_csv_dir, tmp_path):
    out = tmp_path / "out"
    argv = ladder_args(tiny_bert_dir, text_csv_dir, out, "--rungs", "probe_head", "head_only", "full")
    config = str(ROOT / "accelerate_configs/cpu_ddp.yaml")
    result = run(
        [accelerate_bin(), "launch", "--config_file", config, str(ROOT / "recipes/ladder.py"), *argv], timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "process 0 of 2" in result.stderr and "process 1 of 2" in result.stderr
    ladder_json = json.loads((out / "ladder.json").read_text())
    assert [row["status"] for row in ladder_json["rungs"]] == ["done", "done", "done"]
    full = json.loads((out / "rungs" / "full-seed42" / "metrics.json").read_text())
    # 6 steps x 2 ranks x 8 examples: both ranks trained the rung together
    assert full["train_samples_per_second"] * full["train_runtime"] == pytest.approx(96, rel=0.05)


@pytest.mark.parametrize(
    "modality, depth, dims, expected",
    [
        ("text", 3, {"hidden": 32}, "3"),
        ("image", 5, {"widths": [8, 16, 24, 40, 80, 1280], "stage_modules": {"3": "blocks.3"}}, "pre_logits"),
        ("image", 3, {"widths": [8, 16, 24, 40, 80, 1280], "stage_modules": {"3": "blocks.3"}}, "blocks.3"),
    ],
)
def test_the_probe_head_command_extracts_the_layer_the_probe_chose(modality, depth, dims, expected):
    from ftpeft.ladder.probe import ProbeLayer, ProbeResult
    from ftpeft.ladder.run import probe_feature_layer

    best = ProbeLayer("chosen", depth, "mean", 0.9, 0.9, None, 0.1)
    probe = ProbeResult([best], 5, 1.0, 10, dims)
    assert probe_feature_layer(best, probe, modality) == expected


def unconverged(name, val, test, seconds):
    cut = row(name, val, test, seconds)
    cut.converged, cut.stop_note = [False], "the budget's 40 steps, validation still improving at epoch 1.2"
    return cut


@pytest.mark.parametrize(
    "rows,expected",
    [
        # the best validation score is a rung cut before it converged: not a candidate
        ([unconverged("full", 0.95, 0.9, 100), row("last_k", 0.90, 0.9, 40)], "last_k"),
        # converged (True) and fixed-length (None) rungs are both candidates
        ([row("full", 0.95, 0.9, 100), row("last_k", 0.80, 0.9, 40)], "full"),
    ],
)
def test_only_converged_rungs_are_chosen(rows, expected):
    from ftpeft.ladder.report import render_markdown, scenario

    rows[0].converged = rows[0].converged or [True]
    chosen, tolerance = choose(rows, "accuracy", n_val=4000, tolerance=None)
    assert chosen.name == expected
    text = scenario(chosen, rows, "accuracy", 100.0, 0, tolerance)
    if not rows[0].comparable:
        assert "not converged" in render_markdown(rows, chosen, tolerance, "accuracy", {})
        assert "full" not in text  # the scenario is read from converged rungs only


def test_the_cost_model_starts_from_its_guess_then_learns_length_and_speed():
    from ftpeft.ladder.run import EPOCHS_TO_CONVERGE_GUESS, Learned, RungCost, budget_steps
    from ftpeft.ladder.rungs import Rung

    rows = {"train": 100, "validation": 10, "test": 10}
    cost = RungCost(Rung("full", [], "all", 1.0), 0.01, rows, cache_built=False, open_ended=True)
    learned = Learned(EPOCHS_TO_CONVERGE_GUESS)
    assert learned.estimate(cost) == pytest.approx(cost.seconds(EPOCHS_TO_CONVERGE_GUESS))
    # a rung ran 5 epochs in twice the model's time for 5 epochs: later rungs are estimated at 5 epochs, x2
    learned.learn(cost, wall=2 * cost.seconds(5.0), stopped_epoch=5.0)
    assert learned.expected_epochs == 5.0 and learned.calibration == pytest.approx(2.0)
    assert learned.estimate(cost) == pytest.approx(2 * cost.seconds(5.0))
    # the steps the budget leaves: (seconds left - fixed costs) / calibrated seconds per epoch x steps per epoch
    per_epoch = 2 * (cost.seconds(2.0) - cost.seconds(1.0))
    left = 2 * cost.seconds(0.0) + 3 * per_epoch
    assert budget_steps(cost, learned, left, steps_per_epoch=10) == 30


def test_a_rung_cut_by_the_budget_is_marked_not_converged(tmp_path, monkeypatch):
    import ftpeft.ladder.run as ladder_run
    from ftpeft.core.preemption import SignalFlag
    from ftpeft.ladder.requeue import PROGRESS_FILE, LadderProgress, LadderStops
    from ftpeft.ladder.rungs import Rung

    seen = {}

    def fake_run_one(modality, argv):
        seen["cap"] = int(argv[argv.index("--auto_max_steps") + 1])
        return {"status": "done", "eval_accuracy": 0.9, "eval_macro_f1": 0.9, "test_accuracy": 0.9,
                "train_seconds": 1.0, "trainable_params": 10, "peak_rss_mb": 1.0, "converged": False,
                "best_epoch": 1.0, "stopped_epoch": 1.5, "stopped_step": seen["cap"]}  # fmt: skip

    monkeypatch.setattr(ladder_run, "run_one", fake_run_one)
    rung = Rung("full", ["--unfreeze_last", "all"], "all", 1.0)
    cost = ladder_run.RungCost(rung, 0.01, {"train": 100, "validation": 10}, False, open_ended=True)
    learned = ladder_run.Learned(ladder_run.EPOCHS_TO_CONVERGE_GUESS)
    modality = ladder_run.Modality("text", "recipes/bert_cls.py", (), {})
    stops = LadderStops(SignalFlag(()), LadderProgress(tmp_path / PROGRESS_FILE, 100.0), tmp_path, "", True)
    result = ladder_run.run_rung(rung, [42], modality, [], cost, learned, 4, stops)
    assert not result.comparable and f"the budget's {seen['cap']} steps" in result.stop_note
    assert result.as_json()["converged"] == [False] and result.as_json()["best_epoch"] == 1.0


def test_an_auto_ladder_trains_each_rung_to_its_own_stopping_point(tiny_bert_dir, text_csv_dir, tmp_path):
    argv = ["--model_name_or_path", str(tiny_bert_dir), "--train_file", str(text_csv_dir / "train.csv"),
            "--validation_file", str(text_csv_dir / "validation.csv"), "--test_file", str(text_csv_dir / "test.csv"),
            "--output_dir", str(tmp_path / "out"), "--per_device_train_batch_size", "8", "--rungs", "head_only", "full",
            "--early_stopping_patience", "1", "--auto_max_epochs", "4", "--time_budget", "10m"]  # fmt: skip
    result = ladder.main(argv)
    trained = {r["name"]: r for r in result["rungs"] if r["name"] in ("head_only", "full")}
    for rung in trained.values():
        assert rung["status"] == "done" and len(rung["converged"]) == 1
        assert 0 < rung["best_epoch"] <= rung["stopped_epoch"] <= 4
        assert rung["comparable"] == (rung["converged"][0] is True)
    assert "best epoch" in (tmp_path / "out" / "ladder.md").read_text() or any(
        not r["comparable"] for r in trained.values()
    )


LITE0_SHARES = [0.13, 0.31, 0.79, 0.925, 0.984, 0.996, 0.9996, 1.0]  # top 6 of 7 stages: 99.9%; top 3: 92.5%


@pytest.mark.parametrize(
    "rungs_flag,shares,skipped",
    [
        (["default"], LITE0_SHARES, {"last_k_large"}),
        (["all"], LITE0_SHARES, {"last_k_large"}),
        # a text encoder: its embeddings stay frozen below 'all', no depth comes near full
        (["default"], [0.01, 0.09, 0.17, 0.25, 0.33, 0.41, 0.49], set()),
        # without the full rung, the deepest last-k is the ladder's most complete run: kept
        (["probe_head", "head_only", "last_k_small", "last_k_large", "lora"], LITE0_SHARES, set()),
        (["last_k_large", "full"], LITE0_SHARES, set()),  # asked for by name: runs as asked
        (["default", "last_k_large"], LITE0_SHARES, set()),
        (["default"], None, set()),  # a probe saved before shares were recorded: nothing skipped
    ],
)
def test_a_last_k_rung_that_trains_nearly_everything_is_skipped_beside_full(rungs_flag, shares, skipped):
    ladder_args = LadderArguments(rungs=rungs_flag)
    num_layers = 7 if shares is None else len(shares) - 1
    rungs = build_rungs(ladder_args.rung_names, num_layers, (3, 6), set(), [], False)
    reasons = near_full_rungs(rungs, shares, ladder_args.named_rungs)
    assert set(reasons) == skipped
    for name in skipped:
        k = next(r.unfreeze_last for r in rungs if r.name == name)
        assert reasons[name].startswith(f"--unfreeze_last {k} trains {100 * shares[k]:.1f}%")
