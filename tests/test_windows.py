"""--long_texts windows: long texts split into overlapping windows, trained on whole, scored per text by the mean of
their windows' logits (evaluation, test, ftpeft predict, the ONNX export)."""

import json

import numpy as np
import pytest
from helpers import load_recipe, make_long_text_files, make_tokenizer, tiny_args

bert_cls = load_recipe("bert_cls")

LONG_TEXT_CASES = [
    # (what, mode, length given, training lengths, length used, text columns, windows, in the why)
    ("auto, the model was too short for >1%", "auto", False, [10] * 90 + [100] * 10, 64, 1, True, "10.0% of the"),
    ("auto, at most 1% longer", "auto", False, [10] * 99 + [100], 64, 1, False, "1.0% of the training texts"),
    ("auto, a length the user gave", "auto", True, [100] * 10, 64, 1, False, "--max_seq_length was given"),
    ("auto, a pair of texts", "auto", False, [100] * 10, 64, 2, False, "but a pair is truncated"),
    ("truncate as asked", "truncate", False, [100] * 10, 64, 1, False, "--long_texts truncate"),
    ("windows as asked, nothing long", "windows", True, [10] * 10, 64, 1, True, "0.0% of the training texts"),
]  # fmt: skip


@pytest.mark.parametrize(
    "mode,given,lengths,used,columns,windows,why", [c[1:] for c in LONG_TEXT_CASES], ids=[c[0] for c in LONG_TEXT_CASES]
)
def test_long_texts_read_as_windows_only_where_asked_or_longer_than_the_model(
    mode, given, lengths, used, columns, windows, why
):
    from ftpeft.text.windows import resolve_long_texts

    chosen, reason = resolve_long_texts(mode, given, lengths, used, columns)
    assert chosen is windows and why in reason


STRIDE_CASES = [
    # (what, --doc_stride, window, used or the refusal)
    ("default: a quarter of the window", None, 512, 128),
    ("as given", 50, 512, 50),
    ("half the window is refused", 256, 512, "--doc_stride 256 overlaps windows of 512 tokens by half or more"),
]  # fmt: skip


@pytest.mark.parametrize("stride,window,expected", [c[1:] for c in STRIDE_CASES], ids=[c[0] for c in STRIDE_CASES])
def test_the_windows_overlap_by_a_quarter_unless_given_and_never_by_half(stride, window, expected):
    from ftpeft.core.errors import FtpeftError
    from ftpeft.text.windows import resolve_doc_stride

    if isinstance(expected, int):
        assert resolve_doc_stride(stride, window) == expected
    else:
        with pytest.raises(FtpeftError, match=expected):
            resolve_doc_stride(stride, window)


POOL_CASES = [
    # (what, window outputs, labels, documents, pooled, labels per text)
    ("one window each", [[1.0, 2.0], [3.0, 0.0]], [1, 0], [0, 1], [[1.0, 2.0], [3.0, 0.0]], [1, 0]),
    ("a mean over windows", [[1.0, 3.0], [3.0, 1.0], [5.0, 0.0]], [1, 1, 0], [0, 0, 1], [[2.0, 2.0], [5.0, 0.0]], [1, 0]),
    ("no labels", [[2.0], [4.0], [9.0]], None, [4, 4, 7], [[3.0], [9.0]], None),
    ("label sets", [[0.0, 2.0], [2.0, 0.0]], [[1, 0], [1, 0]], [3, 3], [[1.0, 1.0]], [[1, 0]]),
]  # fmt: skip


@pytest.mark.parametrize(
    "outputs,labels,documents,pooled,text_labels", [c[1:] for c in POOL_CASES], ids=[c[0] for c in POOL_CASES]
)
def test_a_text_scores_the_mean_of_its_windows_logits(outputs, labels, documents, pooled, text_labels):
    from ftpeft.core.windows import pool_windows

    logits = np.asarray(outputs, dtype=np.float32)
    for given in (logits, (logits, np.zeros((len(logits), 3)))):  # a tuple's first item is the logits
        scores, references = pool_windows(given, labels, documents)
        np.testing.assert_allclose(scores, pooled)
        assert scores.dtype == np.float32
        assert (references is None) if text_labels is None else references.tolist() == text_labels


@pytest.mark.parametrize("words,window,stride", [(3, 16, 4), (40, 16, 4), (40, 16, 7), (100, 32, 8)])
def test_windows_cover_every_token_once_past_the_overlap_and_keep_the_label(words, window, stride):
    from datasets import ClassLabel, Dataset

    from ftpeft.core.windows import DOCUMENT_COLUMN
    from ftpeft.text.windows import tokenize_windows

    tokenizer = make_tokenizer()
    texts = [" ".join(["good film"] * words), "bad", " ".join(["dull plot"] * (words // 2))]
    rows = Dataset.from_dict({"text": texts, "labels": [1, 0, 0]}).cast_column("labels", ClassLabel(names=["n", "p"]))
    windows = tokenize_windows(rows, tokenizer, "text", window, stride)
    assert windows.features["labels"] == rows.features["labels"]  # the class names stay
    for index, text in enumerate(texts):
        mine = [w for w in windows if w[DOCUMENT_COLUMN] == index]
        assert all(w["labels"] == rows[index]["labels"] for w in mine)
        assert all(len(w["input_ids"]) <= window for w in mine)
        content = [w["input_ids"][1:-1] for w in mine]  # [CLS] ... [SEP]
        joined = content[0] + [token for part in content[1:] for token in part[stride:]]
        assert joined == tokenizer(text)["input_ids"][1:-1]


@pytest.fixture(scope="module")
def long_text_run(tiny_roberta_dir, tmp_path_factory):
    """A run at the default --long_texts auto on texts longer than the tiny RoBERTa's 78 positions (102 tokens)."""
    root = tmp_path_factory.mktemp("windows")
    data = make_long_text_files(root, repeat=20)
    out = root / "run"
    extra = (
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "1",
        "--max_steps",
        "3",
        "--learning_rate",
        "1e-2",
        "--head_lr",
        "0.3",
    )
    bert_cls.main(tiny_args(tiny_roberta_dir, data, out, *extra))
    return out, data


def window_logits_per_text(run_dir, csv_path, stride: int) -> np.ndarray:
    """The saved model's logits of each text's windows, averaged by hand."""
    import pandas as pd
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(run_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    texts = pd.read_csv(csv_path)["text"].tolist()
    means = []
    with torch.no_grad():
        for text in texts:
            windows = tokenizer(
                text, truncation=True, stride=stride, return_overflowing_tokens=True, padding=True, return_tensors="pt"
            )
            windows.pop("overflow_to_sample_mapping")
            assert len(windows["input_ids"]) == 2  # 102 tokens: two windows of at most 78
            means.append(model(**windows).logits.double().mean(0).numpy())
    return np.stack(means)


def test_a_run_on_texts_longer_than_the_model_reads_them_whole_and_scores_each_text_once(long_text_run):
    import pandas as pd

    from ftpeft import cli

    out, data = long_text_run
    settings = json.loads((out / "resolved_settings.json").read_text())
    assert settings["long_texts"]["used"] == "windows" and "longer than the 78 tokens" in settings["long_texts"]["why"]
    assert settings["doc_stride"]["used"] == 78 // 4
    report = json.loads((out / "data_report.json").read_text())
    for split, rows in (("train", 16), ("validation", 8), ("test", 8)):
        assert report["splits"][split]["truncated"] == 0 and report["splits"][split]["windows"] == 2 * rows
    assert "read as windows of 78 tokens" in (out / "README.md").read_text()
    # test: one prediction per text, from the mean of its windows' logits
    logits = window_logits_per_text(out, data / "test.csv", 78 // 4)
    references = (pd.read_csv(data / "test.csv")["label"] == "pos").astype(int).to_numpy()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] == pytest.approx(float(np.mean(logits.argmax(1) == references)))
    assert (out / "classification_report.md").read_text().splitlines()[
        0
    ] == "# Per-class results (test split, 8 examples)"
    # ftpeft predict scores the same texts the same way
    predictions = out.parent / "predictions.csv"
    assert cli.main(["predict", str(out), "--input", str(data / "test.csv"), "--output", str(predictions)]) == 0
    written = pd.read_csv(predictions)
    softmax = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(written[["neg", "pos"]].to_numpy(), softmax, rtol=1e-5, atol=1e-6)


def test_the_validation_score_that_stops_a_run_counts_texts_not_windows(long_text_run):
    import pandas as pd

    out, data = long_text_run
    logits = window_logits_per_text(out, data / "validation.csv", 78 // 4)
    references = (pd.read_csv(data / "validation.csv")["label"] == "pos").astype(int).to_numpy()
    metrics = json.loads((out / "metrics.json").read_text())  # Trainer.evaluate, as every evaluation in training
    assert metrics["eval_accuracy"] == pytest.approx(float(np.mean(logits.argmax(1) == references)))
    assert metrics["eval_samples_per_second"] * metrics["eval_runtime"] == pytest.approx(8, rel=0.05)  # 8 texts


REFUSED = [
    # (what, flags, the error line)
    ("the activation cache", ["--cache_frozen", "--unfreeze_last", "2"], "--cache_frozen caches one row per text, but the long texts are"),
    ("an overlap of half a window", ["--doc_stride", "39"], "--doc_stride 39 overlaps windows of 78 tokens by half"),
    ("the search's cache", ["--hp_search", "2", "--cache_frozen", "--unfreeze_last", "2"], "--hp_search --cache_frozen caches one row per text"),
]  # fmt: skip


@pytest.mark.parametrize("flags,message", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_what_windows_cannot_do_is_refused_in_one_line(tiny_roberta_dir, tmp_path, capsys, flags, message):
    from ftpeft.core.errors import run_cli

    data = make_long_text_files(tmp_path, repeat=20)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(bert_cls.main)(tiny_args(tiny_roberta_dir, data, tmp_path / "run", *flags))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.strip().count("\n") == 0, err
    assert message in err


def test_truncate_as_asked_cuts_the_long_texts_and_reports_it(tiny_roberta_dir, tmp_path):
    data = make_long_text_files(tmp_path, repeat=20)
    out = tmp_path / "run"
    bert_cls.main(tiny_args(tiny_roberta_dir, data, out, "--long_texts", "truncate"))
    settings = json.loads((out / "resolved_settings.json").read_text())
    assert settings["long_texts"]["used"] == "truncate" and "doc_stride" not in settings
    report = json.loads((out / "data_report.json").read_text())
    assert report["splits"]["train"]["truncated_share"] == 1.0 and report["splits"]["train"]["windows"] is None


def test_the_onnx_export_of_a_windows_run_scores_texts_as_torch_does(long_text_run, tmp_path):
    import pandas as pd

    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from ftpeft import cli

    out, data = long_text_run
    export = tmp_path / "onnx"
    assert cli.main(["export", str(out), "--format", "onnx", "--output", str(export)]) == 0
    assert json.loads((export / "onnx_export.json").read_text())["doc_stride"] == 78 // 4
    frame = pd.read_csv(data / "test.csv")  # one to three windows a text
    frame["text"] = [" ".join([text] * (1 + i % 3)) for i, text in enumerate(frame["text"])]
    frame.to_csv(tmp_path / "mixed.csv", index=False)
    scores = {}
    for backend in ("torch", "onnx"):
        output = tmp_path / f"{backend}.csv"
        folder = export if backend == "onnx" else out  # the export's folder, copied alone, predicts by itself
        argv = ["predict", str(folder), "--input", str(tmp_path / "mixed.csv"), "--output", str(output)]
        argv += ["--batch_size", "3", "--backend", backend]
        assert cli.main(argv) == 0
        scores[backend] = pd.read_csv(output)[["neg", "pos"]].to_numpy()
    np.testing.assert_allclose(scores["onnx"], scores["torch"], rtol=0, atol=1e-6)
    assert np.ptp(scores["torch"][:, 1]) > 1e-5  # rows differ by more than that: a mix-up could not pass


def hand_window_features(model_dir, csv_path, stride: int) -> np.ndarray:
    """Each text's mean-pooled last hidden state, averaged over its windows, by hand."""
    import pandas as pd
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    with torch.no_grad():
        for text in pd.read_csv(csv_path)["text"]:
            windows = tokenizer(
                text, truncation=True, max_length=78, stride=stride, return_overflowing_tokens=True, padding=True,
                return_tensors="pt",
            )  # fmt: skip
            windows.pop("overflow_to_sample_mapping")
            hidden = model(**windows).last_hidden_state
            mask = windows["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            rows.append(((hidden * mask).sum(1) / mask.sum(1)).double().mean(0).numpy())
    return np.stack(rows)


def test_extracted_features_of_a_long_text_are_the_mean_of_its_windows_and_its_head_predicts_so(
    tiny_roberta_dir, tmp_path
):
    import pandas as pd

    from ftpeft import cli
    from ftpeft.features.extract import load_features

    data = make_long_text_files(tmp_path, repeat=20)
    files = [f"--{split}_file={data / f'{split}.csv'}" for split in ("train", "validation", "test")]
    extracted = load_recipe("extract_features").main(
        ["--modality", "text", "--model_name_or_path", str(tiny_roberta_dir), *files, "--pooling", "mean",
         "--feature_dir", str(tmp_path / "features")]
    )  # fmt: skip
    splits, metadata = load_features(extracted["feature_dir"])
    assert metadata["request"]["backbones"][0]["doc_stride"] == 78 // 4
    expected = hand_window_features(tiny_roberta_dir, data / "test.csv", 78 // 4)
    np.testing.assert_allclose(splits["test"][0], expected, rtol=1e-4, atol=1e-5)
    head = tmp_path / "head"
    load_recipe("train_head").main(["--features_dir", extracted["feature_dir"], "--output_dir", str(head)])
    predictions = tmp_path / "predictions.csv"
    assert cli.main(["predict", str(head), "--input", str(data / "test.csv"), "--output", str(predictions)]) == 0
    from ftpeft.features.heads import load_sklearn_head

    probabilities = load_sklearn_head(head).predict_proba(splits["test"][0])
    np.testing.assert_allclose(pd.read_csv(predictions)[["neg", "pos"]].to_numpy(), probabilities, atol=1e-5)


@pytest.mark.slow
def test_a_ladder_on_long_texts_probes_and_trains_on_whole_texts_and_its_probe_row_reproduces(
    tiny_roberta_dir, tmp_path, monkeypatch
):
    import sys

    from helpers import run

    from ftpeft.ladder import probe

    data = make_long_text_files(tmp_path, repeat=20)
    seen = {}
    probe_layers = probe.probe_layers
    monkeypatch.setattr(
        probe, "probe_layers", lambda f, labels, *a, **k: seen.update({s: len(v) for s, v in labels.items()})
        or probe_layers(f, labels, *a, **k)
    )  # fmt: skip
    out = tmp_path / "ladder"
    argv = [
        "--model_name_or_path", str(tiny_roberta_dir), *(f"--{s}_file={data / f'{s}.csv'}" for s in ("train", "validation", "test")),
        "--output_dir", str(out), "--max_steps", "4", "--per_device_train_batch_size", "8", "--eval_strategy", "no",
        "--save_strategy", "no", "--rungs", "probe_head", "head_only", "full",
    ]  # fmt: skip
    result = load_recipe("ladder").main(argv)
    assert seen == {"train": 16, "validation": 8, "test": 8}  # texts, not their 32 / 16 / 16 windows
    rows = {row["name"]: row for row in result["rungs"]}
    assert all(row["status"] == "done" for row in rows.values()), rows
    assert "--cache_frozen" not in rows["head_only"]["command"]  # the cache holds one row per text
    settings = json.loads((out / "rungs" / "head_only-seed42" / "resolved_settings.json").read_text())
    assert settings["long_texts"]["used"] == "windows"
    done = run(["bash", "-c", rows["probe_head"]["command"].replace("python ", f"{sys.executable} ")], timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "probe_head" / "metrics.json").read_text())
    assert metrics["eval_accuracy"] == pytest.approx(rows["probe_head"]["val_accuracy"], abs=1e-9)
    assert metrics["test_accuracy"] == pytest.approx(rows["probe_head"]["test_accuracy"], abs=1e-9)


@pytest.mark.slow
def test_two_ranks_score_each_text_by_its_own_windows(tiny_roberta_dir, tmp_path):
    """Evaluation batches split unevenly over 2 ranks; the gathered windows must still meet their own texts: the
    pooled validation labels and outputs (numbers, one per text) follow the file's rows."""
    import pandas as pd
    from helpers import launch_recipe_on_two_cpu_ranks, make_regression_files

    from ftpeft.labels.evaluation import VALIDATION_OUTPUTS_FILE

    data = make_regression_files(tmp_path)
    for split in ("train", "validation", "test"):  # 5 words said 20 times: two windows of the 78 positions each
        frame = pd.read_csv(data / f"{split}.csv")
        frame["text"] = [" ".join([text] * 20) for text in frame["text"]]
        frame.to_csv(data / f"{split}.csv", index=False)
    out = tmp_path / "run"
    argv = tiny_args(tiny_roberta_dir, data, out, "--label_column", "score", "--per_device_eval_batch_size", "5")
    done = launch_recipe_on_two_cpu_ranks("bert_cls", *argv)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = np.load(out / VALIDATION_OUTPUTS_FILE)
    scores = pd.read_csv(data / "validation.csv")["score"].to_numpy()
    assert saved["labels"].reshape(-1).shape == scores.shape  # 32 texts, not their 64 windows
    assert np.corrcoef(saved["labels"].reshape(-1), scores)[0, 1] > 0.999999  # the same rows, rescaled
    expected = window_logits_per_text(out, data / "validation.csv", 78 // 4).reshape(-1)
    assert np.corrcoef(saved["outputs"].reshape(-1), expected)[0, 1] > 0.9999  # standardised units vs the model's


RECIPE_ENCODER_CASES = [
    # (what, --long_texts, windows, the why or the refusal)
    ("auto truncates, and says so", "auto", False, "so each is split into windows; this recipe truncates them"),
    ("truncate as asked", "truncate", False, "--long_texts truncate"),
    ("windows asked for is refused", "windows", None, "--long_texts windows: this recipe's inputs are not split"),
]  # fmt: skip


@pytest.mark.parametrize(
    "mode,windows,why", [c[1:] for c in RECIPE_ENCODER_CASES], ids=[c[0] for c in RECIPE_ENCODER_CASES]
)
def test_a_recipe_with_its_own_encoder_truncates_long_texts_and_says_so(mode, windows, why):
    """knowledge_cls encodes its knowledge ids beside the tokens (``encode``): its texts are not split."""
    from ftpeft.core.errors import FtpeftError
    from ftpeft.text.args import TextDataArguments
    from ftpeft.text.data import long_text_windows

    data_args = TextDataArguments(long_texts=mode)
    lengths, own_encoder = [100] * 10, lambda *args: None
    if windows is None:
        with pytest.raises(FtpeftError, match=why):
            long_text_windows(data_args, lengths, 64, ["text"], own_encoder)
        return
    chosen, reason, stride = long_text_windows(data_args, lengths, 64, ["text"], own_encoder)
    assert chosen is windows and why in reason and stride is None
    assert long_text_windows(data_args, lengths, 64, ["text"], None)[0] is (mode == "auto")  # bert_cls splits them
