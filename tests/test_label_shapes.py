"""Label sets and numbers (--problem_type) through every text strategy: train, save, reload with `ftpeft predict`,
and the predictions give back the run's own test scores; the label formats, the thresholds and the refusals."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers import (
    LABEL_SET_TAGS,
    call_entry_point,
    load_recipe,
    make_label_set_files,
    make_regression_files,
    make_text_files,
    snapshot,
    tiny_args,
    write_glove,
)

from ftpeft.cli import main as cli_main

bert_cls = load_recipe("bert_cls")
knowledge_cls = load_recipe("knowledge_cls")

LABEL_SET_FLAGS = ["--label_column", "tags", "--label_separator", ","]
REGRESSION_FLAGS = ["--label_column", "score"]
# strategy -> (recipe, its flags); every one trains 6 steps at LRs a tiny model learns from
STRATEGIES = {
    "last_k": (bert_cls, ["--unfreeze-last", "2"]),
    "mean_readout": (bert_cls, ["--unfreeze-last", "0", "--pooling", "mean"]),
    "lora": (bert_cls, ["--use_peft", "--lora_r", "4"]),
    "cache_frozen": (bert_cls, ["--unfreeze-last", "1", "--cache_frozen", "--cache_dtype", "float32"]),
    "lp_ft": (bert_cls, ["--unfreeze-last", "2", "--lp_ft"]),
    "knowledge": (knowledge_cls, ["--inject", "add", "--unfreeze-last", "2"]),
}


@pytest.fixture(scope="module")
def shape_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    (root / "sets").mkdir()
    (root / "numbers").mkdir()
    return {
        "multi_label": (make_label_set_files(root / "sets"), LABEL_SET_FLAGS),
        "regression": (make_regression_files(root / "numbers"), REGRESSION_FLAGS),
        "kb": write_glove(root / "kb.txt"),
    }


def predict_csv(run_dir, test_csv, out):
    assert cli_main(["predict", str(run_dir), "--input", str(test_csv), "--output", str(out)]) in (0, None)
    return pd.read_csv(out)


def scores_from_predictions(problem_type, frame, test, target):
    """The test metrics recomputed from `ftpeft predict`'s CSV alone."""
    from ftpeft.labels.scores import multi_label_scores, regression_scores

    if problem_type == "regression":
        return regression_scores(
            frame[list(target["names"])].to_numpy(), test[list(target["names"])].to_numpy(), target["names"]
        )
    truth = np.array([[tag in str(cell).split(",") for tag in target["names"]] for cell in test["tags"]])
    probabilities = frame[list(target["names"])].to_numpy()
    scores = multi_label_scores(probabilities, truth, target["thresholds"])
    predicted = [set(str(cell).split(",")) - {"nan", ""} for cell in frame["labels"].fillna("")]
    decided = [{n for n, p, t in zip(target["names"], row, target["thresholds"]) if p >= t} for row in probabilities]
    assert predicted == decided  # the labels column is the thresholds applied
    return scores


@pytest.mark.parametrize("problem_type", ["multi_label", "regression"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_trains_saves_and_predicts_its_own_test_scores(
    tiny_bert_dir, shape_data, tmp_path, problem_type, strategy
):
    recipe, flags = STRATEGIES[strategy]
    data, label_flags = shape_data[problem_type]
    if recipe is knowledge_cls:
        flags = [*flags, "--knowledge_file", str(shape_data["kb"])]
    out = tmp_path / "run"
    argv = tiny_args(tiny_bert_dir, data, out, *label_flags, *flags, "--max_steps", "6", "--learning_rate", "3e-3")
    metrics = recipe.main(argv)
    target = json.loads((out / "target.json").read_text())
    assert (
        target["problem_type"]
        == {"multi_label": "multi_label_classification", "regression": "regression"}[problem_type]
    )
    frame = predict_csv(out, data / "test.csv", tmp_path / "predictions.csv")
    scores = scores_from_predictions(problem_type, frame, pd.read_csv(data / "test.csv"), target)
    for name in (
        ("map", "macro_f1", "micro_f1", "subset_accuracy") if problem_type == "multi_label" else ("rmse", "mae", "r2")
    ):
        assert scores[name] == pytest.approx(metrics[f"test_{name}"], abs=1e-5), name
    if problem_type == "multi_label":
        assert set(target["names"]) == set(LABEL_SET_TAGS)
        assert json.loads((out / "thresholds.json").read_text()) == dict(zip(target["names"], target["thresholds"]))
        assert metrics["thresholds_chosen_on"] == "validation" and "test_macro_f1_at_0.5" in metrics
    else:
        assert (out / "predictions_scatter.png").stat().st_size > 0


def test_a_folded_regression_head_gives_target_units_in_a_stock_pipeline(tiny_bert_dir, shape_data, tmp_path):
    from transformers import pipeline

    data, label_flags = shape_data["regression"]
    out = tmp_path / "run"
    bert_cls.main(tiny_args(tiny_bert_dir, data, out, *label_flags, "--max_steps", "6", "--learning_rate", "3e-3"))
    test = pd.read_csv(data / "test.csv")
    stock = pipeline("text-classification", model=str(out), function_to_apply="none", device="cpu")
    outputs = [row["score"] for row in stock(list(test["text"]))]
    frame = predict_csv(out, data / "test.csv", tmp_path / "p.csv")
    np.testing.assert_allclose(outputs, frame["score"].to_numpy(), atol=1e-5)
    assert 1.0 < np.mean(outputs) < 5.0  # the target's units (mean 3), not standardised ones


def test_the_three_label_set_formats_give_the_same_multi_hot_matrix(tmp_path):
    from ftpeft.text.args import TextDataArguments
    from ftpeft.text.data import load_text_classification_data

    matrices = {}
    for layout, ext, flags in (
        ("list", "jsonl", {"label_column": "tags"}),
        ("separator", "csv", {"label_column": "tags", "label_separator": ","}),
        ("columns", "csv", {"label_columns": list(LABEL_SET_TAGS)}),
    ):
        folder = tmp_path / layout
        folder.mkdir()
        make_label_set_files(folder, layout)
        files = {f"{split}_file": str(folder / f"{split}.{ext}") for split in ("train", "validation", "test")}
        datasets, names, *_, target = load_text_classification_data(TextDataArguments(**files, **flags), seed=0)
        assert target.is_multi_label, layout
        order = [names.index(tag) for tag in sorted(LABEL_SET_TAGS)]
        matrices[layout] = {split: np.asarray(d["labels"])[:, order] for split, d in datasets.items()}
    for layout in ("separator", "columns"):
        for split in ("train", "validation", "test"):
            np.testing.assert_array_equal(matrices[layout][split], matrices["list"][split], err_msg=f"{layout} {split}")


def test_auto_decides_from_column_types_only(tmp_path):
    from ftpeft.text.args import TextDataArguments
    from ftpeft.text.data import load_text_classification_data

    make_regression_files(tmp_path)
    files = {f"{split}_file": str(tmp_path / f"{split}.csv") for split in ("train", "validation", "test")}
    *_, target = load_text_classification_data(TextDataArguments(**files, label_column="score"), seed=0)
    assert target.is_regression and "non-integer numbers" in target.why
    frame = pd.read_csv(tmp_path / "train.csv")
    frame["tags"] = ["praise,film"] * len(frame)  # a comma in a string is one class unless --label_separator says
    frame.assign(tags=[("a,b" if i % 2 else "c") for i in range(len(frame))]).to_csv(
        tmp_path / "train.csv", index=False
    )
    for split in ("validation", "test"):
        other = pd.read_csv(tmp_path / f"{split}.csv")
        other.assign(tags=[("a,b" if i % 2 else "c") for i in range(len(other))]).to_csv(
            tmp_path / f"{split}.csv", index=False
        )
    *_, target = load_text_classification_data(TextDataArguments(**files, label_column="tags"), seed=0)
    assert target.is_single_label and set(target.names) == {"a,b", "c"}


def test_thresholds_are_chosen_on_validation_never_on_test(tiny_bert_dir, shape_data, tmp_path):
    """Two runs that differ only in their test file (one with every tag flipped) choose the same thresholds."""
    data, label_flags = shape_data["multi_label"]
    rigged = tmp_path / "rigged"
    rigged.mkdir()
    for split in ("train", "validation"):
        (rigged / f"{split}.csv").write_bytes((data / f"{split}.csv").read_bytes())
    test = pd.read_csv(data / "test.csv")
    flipped = [
        ",".join(t for t in LABEL_SET_TAGS if t not in str(cell).split(",")) or "praise" for cell in test["tags"]
    ]
    test.assign(tags=flipped).to_csv(rigged / "test.csv", index=False)
    chosen = []
    for name, folder in (("plain", data), ("rigged", rigged)):
        out = tmp_path / f"run_{name}"
        bert_cls.main(
            tiny_args(tiny_bert_dir, folder, out, *label_flags, "--max_steps", "6", "--learning_rate", "3e-3")
        )
        chosen.append(json.loads((out / "thresholds.json").read_text()))
    assert chosen[0] == chosen[1]
    assert any(abs(t - 0.5) > 1e-9 for t in chosen[0].values())  # chosen, not the default


def _csv(path, header, rows):
    path.write_text("\n".join([header, *rows]) + "\n")


# (case, write the train file into folder, extra flags, what the one-line error says)
REFUSALS = [
    ("duplicate header", lambda f: _csv(f, "text,text,label", ["good film,bad,pos", "bad film,good,neg"]), [],
     "column name(s) ['text'] occur more than once"),
    ("a 'labels' column beside --label_column", lambda f: _csv(f, "text,label,labels", ["good,pos,-2", "bad,neg,x"]), [],
     "a column is named 'labels'"),
    ("a word in a regression column", lambda f: _csv(f, "text,score", ["good,1.5", "bad,high", "ok,0.25"]),
     ["--label_column", "score", "--problem_type", "regression"], "column 'score' of the train split has 'high'"),
    ("an empty label set", lambda f: _csv(f, "text,tags", ['good,"praise,film"', 'bad," , "', "ok,film"]),
     ["--label_column", "tags", "--label_separator", ","], "1 row(s) with an empty label set"),
    ("multi_label without a set format", lambda f: _csv(f, "text,label", ["good,pos", "bad,neg"]),
     ["--problem_type", "multi_label"], "holds one value per row; give its separator"),
    ("class weights for label sets", lambda f: _csv(f, "text,tags", ['good,"praise,film"', "bad,film", "ok,praise"]),
     ["--label_column", "tags", "--label_separator", ",", "--class_weights", "balanced"], "--class_weights is for one class per row"),
    ("pos_weight for numbers", lambda f: _csv(f, "text,score", ["good,1.5", "bad,-1.25", "ok,0.5"]),
     ["--label_column", "score", "--pos_weight", "balanced"], "--pos_weight is for label sets"),
    ("a constant target", lambda f: _csv(f, "text,score", ["good,1.5", "bad,1.5", "ok,1.5"]),
     ["--label_column", "score", "--problem_type", "regression"], "constant in train"),
    ("a bad --threshold", lambda f: _csv(f, "text,label", ["good,pos", "bad,neg"]), ["--threshold", "1.5"],
     "--threshold must be 'auto' or a number in (0, 1)"),
    ("a bad --problem_type", lambda f: _csv(f, "text,label", ["good,pos", "bad,neg"]), ["--problem_type", "multiclass"],
     "--problem_type 'multiclass': use auto, single_label"),
]  # fmt: skip


@pytest.mark.parametrize("case, write, flags, message", REFUSALS, ids=[case[0] for case in REFUSALS])
def test_bad_label_input_is_one_line_and_exit_2(tiny_bert_dir, tmp_path, case, write, flags, message):
    data = tmp_path / "data"
    data.mkdir()
    make_text_files(data)
    write(data / "train.csv")
    before = snapshot(data)
    out = tmp_path / "out"
    argv = tiny_args(tiny_bert_dir, data, out, *flags)
    argv = [a for a in argv if not a.endswith(("validation.csv", "test.csv"))]
    argv = [a for i, a in enumerate(argv) if a not in ("--validation_file", "--test_file")]
    outcome = call_entry_point(bert_cls.main, argv)
    assert outcome.code == 2, outcome.stderr[-2000:]
    last = outcome.stderr.rstrip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    assert snapshot(data) == before and not (out.exists() and any(out.iterdir()))


@pytest.mark.parametrize(
    "problem_type, metric, lower_is_better", [("multi_label", "map", False), ("regression", "rmse", True)]
)
def test_the_ladder_chooses_on_the_problem_types_threshold_free_metric(
    tiny_bert_dir, shape_data, tmp_path, problem_type, metric, lower_is_better
):
    data, label_flags = shape_data[problem_type]
    argv = tiny_args(tiny_bert_dir, data, tmp_path / "ladder", *label_flags, "--max_steps", "6", "--learning_rate",
                     "3e-3", "--rungs", "probe_head", "head_only", "last_k_small", "--time_budget", "10m")  # fmt: skip
    result = load_recipe("ladder").main(argv)
    assert result["metric"] == metric and result["data"]["problem_type"].startswith(problem_type.split("_")[0])
    assert "bootstrap" in result["tolerance_method"] and result["tolerance"] > 0
    done = [r for r in result["rungs"] if r["status"] == "done"]
    assert {r["name"] for r in done} == {"probe_head", "head_only", "last_k_small"}
    scores = {r["name"]: r["val_scores"][metric] for r in done}
    best = (min if lower_is_better else max)(scores.values())
    chosen = scores[result["recommended"]]
    assert abs(chosen - best) <= result["tolerance"] + 1e-9  # within the tolerance of the best on validation
    assert f"val {metric}" in (tmp_path / "ladder" / "ladder.md").read_text()


def test_hp_search_scores_trials_by_rmse_for_numbers(tiny_bert_dir, shape_data, tmp_path):
    data, label_flags = shape_data["regression"]
    out = tmp_path / "search"
    argv = tiny_args(tiny_bert_dir, data, out, *label_flags, "--max_steps", "4", "--hp_search", "2")
    metrics = bert_cls.main(argv)
    report = (out / "hp_search.md").read_text()
    assert "rmse" in report and "test_rmse" in metrics
    assert json.loads((out / "target.json").read_text())["problem_type"] == "regression"


def test_the_app_decides_label_sets_at_the_saved_thresholds_and_shows_numbers(tiny_bert_dir, shape_data, tmp_path):
    pytest.importorskip("gradio")
    from ftpeft.app.page import build_page
    from ftpeft.app.scoring import load_scorer

    for problem_type in ("multi_label", "regression"):
        data, label_flags = shape_data[problem_type]
        out = tmp_path / problem_type
        bert_cls.main(tiny_args(tiny_bert_dir, data, out, *label_flags, "--max_steps", "6", "--learning_rate", "3e-3"))
        scorer = load_scorer(out)
        scores = scorer.score_text(["good film with a plot"])
        frame = predict_csv(out, data / "test.csv", tmp_path / f"{problem_type}.csv")
        assert set(scores) == set(frame.columns) - {"id", "labels"}
        if problem_type == "multi_label":
            thresholds = json.loads((out / "thresholds.json").read_text())
            decided = [name for name, p in scores.items() if p >= thresholds[name]]
            assert f"**predicted:** {', '.join(decided) or '(no label)'}" in scorer.decision(scores)
        build_page(scorer, "card")  # the page builds with the problem type's outputs


def test_the_card_carries_the_per_label_table_and_a_loading_snippet_for_the_problem_type(
    tiny_bert_dir, shape_data, tmp_path
):
    data, label_flags = shape_data["multi_label"]
    out = tmp_path / "run"
    bert_cls.main(tiny_args(tiny_bert_dir, data, out, *label_flags, "--max_steps", "6", "--learning_rate", "3e-3"))
    card = (out / "README.md").read_text()
    assert "### Per-label results" in card and "| label | threshold | precision | recall | f1 | AP | support |" in card
    assert "test_map" in card and "top_k=None" in card


@pytest.mark.slow
def test_two_ddp_ranks_score_every_validation_and_test_row_once(tiny_bert_dir, tmp_path):
    """Odd split sizes (31 validation, 15 test rows) on 2 ranks: the gathered outputs are exactly the split's rows."""
    from helpers import launch_recipe_on_two_cpu_ranks

    data = tmp_path / "data"
    data.mkdir()
    make_label_set_files(data, "separator", sizes=(64, 31, 15))
    out = tmp_path / "run"
    result = launch_recipe_on_two_cpu_ranks(
        "bert_cls",
        *tiny_args(tiny_bert_dir, data, out, *LABEL_SET_FLAGS, "--max_steps", "4", "--learning_rate", "3e-3"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(np.load(out / "validation_outputs.npz")["outputs"]) == 31
    assert "(test split, 15 rows)" in (out / "classification_report.md").read_text()
    frame = predict_csv(out, data / "test.csv", tmp_path / "p.csv")
    test = pd.read_csv(data / "test.csv")
    target = json.loads((out / "target.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert scores_from_predictions("multi_label", frame, test, target)["map"] == pytest.approx(
        metrics["test_map"], abs=1e-5
    )


@pytest.mark.parametrize("problem_type", ["multi_label", "regression"])
def test_the_cards_model_index_holds_the_test_metrics_as_the_hub_parses_them(
    tiny_bert_dir, shape_data, tmp_path, problem_type
):
    from huggingface_hub import ModelCard

    data, label_flags = shape_data[problem_type]
    out = tmp_path / "run"
    metrics = bert_cls.main(
        tiny_args(tiny_bert_dir, data, out, *label_flags, "--max_steps", "4", "--learning_rate", "3e-3")
    )
    results = ModelCard.load(out / "README.md").data.eval_results
    indexed = {r.metric_type: r.metric_value for r in results}
    assert indexed["map" if problem_type == "multi_label" else "rmse"] == pytest.approx(
        metrics["test_map" if problem_type == "multi_label" else "test_rmse"]
    )
    assert all(r.task_type == "text-classification" and r.dataset_split == "test" for r in results)
    assert all(indexed[name] == pytest.approx(metrics[f"test_{name}"]) for name in indexed)


def test_numbers_are_standardised_on_the_rows_the_model_trains_on(tmp_path):
    """After validation is held out of train (and --max_train_samples applied), train's labels have mean 0, sd 1."""
    from ftpeft.text.args import TextDataArguments
    from ftpeft.text.data import load_text_classification_data

    make_regression_files(tmp_path, targets=2)
    files = {"train_file": str(tmp_path / "train.csv"), "test_file": str(tmp_path / "test.csv")}
    args = TextDataArguments(**files, label_columns=["score", "tone"], max_train_samples=40)
    datasets, *_, target = load_text_classification_data(args, seed=0)
    train = np.asarray(datasets["train"]["labels"])
    assert (
        len(train) == 40
        and np.allclose(train.mean(axis=0), 0, atol=1e-6)
        and np.allclose(train.std(axis=0), 1, atol=1e-5)
    )
    units = np.asarray(datasets["test"]["labels"]) * np.asarray(target.std) + np.asarray(target.mean)
    np.testing.assert_allclose(units, pd.read_csv(tmp_path / "test.csv")[["score", "tone"]].to_numpy(), atol=1e-4)
