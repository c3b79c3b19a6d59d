"""`ftpeft predict`: every kind of output dir round-trips against the run's own evaluation, plus refusals and 2 ranks.

Each kind is trained once by its recipe (tiny model, 2 steps); the Trainer's own test-split logits are captured during
the run (a head's reference is the head on its cached features), and the CSV's probabilities must equal their softmax.
"""

from __future__ import annotations

import contextlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import (
    CLASSES,
    ROOT,
    TIMM_ARGS,
    TIMM_MODEL,
    accelerate_bin,
    load_recipe,
    make_tiny_text_model,
    make_wordpiece_tokenizer,
    run,
    snapshot,
    tiny_args,
    write_class_folders,
    write_glove,
    write_knowledge_dataset,
)

from ftpeft import cli

bert_cls = load_recipe("bert_cls")
knowledge_cls = load_recipe("knowledge_cls")
image_cls = load_recipe("image_cls")
extract_features = load_recipe("extract_features")
train_head = load_recipe("train_head")

ATOL = 1e-5
TEXT_LABELS = ["neg", "pos"]
TEST_IMAGES_PER_CLASS = 2
IMAGE_IDS = [f"{name}/{i}" for name in CLASSES for i in range(TEST_IMAGES_PER_CLASS)]  # the test split's order


def softmax(logits) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@contextlib.contextmanager
def trainer_test_logits():
    """Record the logits of every ``Trainer.predict`` during a recipe run (the last one scores the test split)."""
    from ftpeft.core.trainer import FtpeftTrainer

    captured, original = [], FtpeftTrainer.predict

    def predict(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        captured.append(np.asarray(logits))
        return output

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FtpeftTrainer, "predict", predict)
        yield captured


def predict_cli(*argv: str) -> int:
    """``ftpeft predict ...`` in this process: the exit code (0, or SystemExit's)."""
    try:
        return cli.main(["predict", *map(str, argv)])
    except SystemExit as exit:
        return exit.code


# --- one run of each kind, built on first use -------------------------------------------------------------


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    """ROOT/train/<class>/*.jpg and ROOT/test/<class>/*.jpg: the recipes' test split is ROOT/test."""
    root = tmp_path_factory.mktemp("images")
    write_class_folders(root / "train", per_class=4)
    write_class_folders(root / "test", per_class=TEST_IMAGES_PER_CLASS)
    return root


class Runs:
    """Trains each kind of run once per module; ``case(kind)`` -> (run dir, input, expected {id: probabilities},
    label names)."""

    def __init__(self, tmp, tiny_bert_dir, text_csv_dir, image_root):
        self.tmp, self.bert, self.text_data, self.images = tmp, tiny_bert_dir, text_csv_dir, image_root
        self.cache: dict = {}

    def case(self, kind: str):
        if kind not in self.cache:
            self.cache[kind] = getattr(self, kind)()
        return self.cache[kind]

    def _text_run(self, name, *flags):
        out = self.tmp / name
        # large LRs and 8 steps: the tiny model's probabilities differ between rows by far more than ATOL
        lrs = ["--learning_rate", "0.01", "--head_lr", "0.3", "--lora_lr", "0.05", "--max_steps", "8"]
        with trainer_test_logits() as logits:
            bert_cls.main(tiny_args(self.bert, self.text_data, out, *lrs, *flags))
        expected = dict(zip(map(str, range(16)), softmax(logits[-1])))
        return out, self.text_data / "test.csv", expected, TEXT_LABELS

    def text(self):
        return self._text_run("text", "--unfreeze-last", "2")

    def merged(self):  # a LoRA run with --merge_adapter: predict reads merged/
        return self._text_run("lora", "--use_peft", "--lora_r", "4", "--merge_adapter")

    def adapter(self):  # the same LoRA run without merged/: the adapter on its base model
        out, data, expected, labels = self.case("merged")
        shutil.copytree(out, self.tmp / "adapter", ignore=shutil.ignore_patterns("merged"))
        return self.tmp / "adapter", data, expected, labels

    def knowledge(self):
        """concat fusion with all three knowledge inputs: entity spans, an ID column and a float column."""
        data = self.tmp / "kb_data"
        data.mkdir()
        encoder = make_tiny_text_model(
            self.tmp / "kb_bert", "bert", num_layers=2, tokenizer=make_wordpiece_tokenizer(), head=False
        )
        write_knowledge_dataset(data / "train.jsonl")
        rows = [
            json.loads(line) for line in write_knowledge_dataset(data / "test.jsonl", repeat=1).read_text().splitlines()
        ]
        (data / "test.jsonl").write_text("".join(json.dumps({"id": f"row{i}", **r}) + "\n" for i, r in enumerate(rows)))
        out = self.tmp / "knowledge"
        argv = [
            "--model_name_or_path", encoder, "--train_file", data / "train.jsonl", "--test_file", data / "test.jsonl",
            "--output_dir", out, "--max_steps", "2", "--per_device_train_batch_size", "4",
            "--validation_split_percentage", "25", "--eval_strategy", "no", "--save_strategy", "no",
            "--inject", "concat", "--knowledge_file", write_glove(data / "kb.txt"),
            "--knowledge_column", "features", "entity_id", "--entity_column", "entities", "--unfreeze_last", "1",
        ]  # fmt: skip
        with trainer_test_logits() as logits:
            knowledge_cls.main(list(map(str, argv)))
        expected = {f"row{i}": p for i, p in enumerate(softmax(logits[-1]))}
        return out, data / "test.jsonl", expected, ["negative", "positive"]

    def timm(self):
        out = self.tmp / "timm"
        argv = ["--image_dir", self.images, *TIMM_ARGS, "--output_dir", out, "--max_steps", "2",
                "--per_device_train_batch_size", "4", "--save_strategy", "no", "--unfreeze-last", "1"]  # fmt: skip
        with trainer_test_logits() as logits:
            image_cls.main(list(map(str, argv)))
        return out, self.images / "test", dict(zip(IMAGE_IDS, softmax(logits[-1]))), list(CLASSES)

    def _features(self):
        if "features" not in self.cache:
            argv = ["--image_dir", self.images, "--model_name_or_path", TIMM_MODEL, "--image_size", "32",
                    "--feature_dir", self.tmp / "features"]  # fmt: skip
            self.cache["features"] = extract_features.main(list(map(str, argv)))["feature_dir"]
        return self.cache["features"]

    def sklearn_head(self):
        from ftpeft.features.extract import load_features
        from ftpeft.features.heads import load_sklearn_head

        out, features = self.tmp / "logreg", self._features()
        train_head.main(["--features_dir", features, "--head", "logreg", "--output_dir", str(out), "--max_iter", "200"])
        x, _ = load_features(features)[0]["test"]
        return out, self.images / "test", dict(zip(IMAGE_IDS, load_sklearn_head(out).predict_proba(x))), list(CLASSES)

    def text_head(self):
        """logreg on mean-pooled hidden states of layer -2 of the tiny BERT: predict reruns that layer on texts."""
        from ftpeft.features.extract import load_features
        from ftpeft.features.heads import load_sklearn_head

        files = [f"--{split}_file={self.text_data / f'{split}.csv'}" for split in ("train", "validation", "test")]
        features = extract_features.main(
            ["--modality", "text", "--model_name_or_path", self.bert, *files, "--layer", "-2", "--pooling", "mean",
             "--max_seq_length", "32", "--feature_dir", str(self.tmp / "text_features")]
        )["feature_dir"]  # fmt: skip
        out = self.tmp / "text_logreg"
        train_head.main(["--features_dir", features, "--head", "logreg", "--output_dir", str(out), "--max_iter", "200"])
        x, _ = load_features(features)[0]["test"]
        expected = dict(zip(map(str, range(16)), load_sklearn_head(out).predict_proba(x)))
        return out, self.text_data / "test.csv", expected, TEXT_LABELS

    def torch_head(self):
        from ftpeft.features.extract import load_features
        from ftpeft.features.heads import load_torch_head, torch_head_scores

        out, features = self.tmp / "linear", self._features()
        train_head.main(["--features_dir", features, "--head", "linear", "--output_dir", str(out), "--epochs", "3"])
        x, _ = load_features(features)[0]["test"]
        scores = torch_head_scores(load_torch_head(out)[0], x)
        return out, self.images / "test", dict(zip(IMAGE_IDS, softmax(scores))), list(CLASSES)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert_dir, text_csv_dir, image_root):
    return Runs(tmp_path_factory.mktemp("runs"), tiny_bert_dir, text_csv_dir, image_root)


# --- every kind of output dir: the CSV's probabilities are the run's own ------------------------------------


@pytest.mark.parametrize(
    "kind", ["text", "merged", "adapter", "knowledge", "timm", "sklearn_head", "torch_head", "text_head"]
)
def test_predictions_equal_the_runs_own_evaluation(runs, kind, tmp_path):
    run_dir, data, expected, label_names = runs.case(kind)
    output = tmp_path / "preds.csv"
    assert predict_cli(run_dir, "--input", data, "--output", output, "--batch_size", "5") == 0
    frame = pd.read_csv(output, dtype={"id": str})
    assert list(frame.columns) == ["id", "label", *label_names]
    assert sorted(frame["id"]) == sorted(expected) and len(frame) == len(expected)
    probabilities = frame[label_names].to_numpy()
    np.testing.assert_allclose(probabilities, np.stack([expected[i] for i in frame["id"]]), rtol=0, atol=ATOL)
    assert np.ptp(np.stack(list(expected.values())), axis=0).max() > 50 * ATOL  # a row mix-up could not pass
    assert list(frame["label"]) == [label_names[i] for i in probabilities.argmax(axis=1)]
    assert [p.name for p in tmp_path.iterdir()] == ["preds.csv"]  # atomic: no temporary left behind


def test_kaggle_test_folder_ids_are_file_stems_and_unreadable_images_are_listed(runs, tmp_path, capsys):
    run_dir, folder, expected, _ = runs.case("timm")
    flat = tmp_path / "test"
    flat.mkdir()
    for image_id in IMAGE_IDS:
        shutil.copy(folder / f"{image_id}.jpg", flat / f"{image_id.replace('/', '_')}.jpg")
    (flat / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (flat / "notes.txt").write_text("not an image")
    output = tmp_path / "submission.csv"
    assert predict_cli(run_dir, "--input", flat, "--output", output) == 0
    frame = pd.read_csv(output, dtype={"id": str}).set_index("id")
    assert sorted(frame.index) == sorted(i.replace("/", "_") for i in IMAGE_IDS)
    for image_id in IMAGE_IDS:
        np.testing.assert_allclose(frame.loc[image_id.replace("/", "_"), list(CLASSES)], expected[image_id], atol=1e-5)
    assert "1 unreadable image(s) skipped" in capsys.readouterr().err
    assert (tmp_path / "submission.skipped.txt").read_text().startswith(str(flat / "broken.jpg") + "\t")
    strict = tmp_path / "strict.csv"
    assert predict_cli(run_dir, "--input", flat, "--output", strict, "--strict_images") == 2
    assert "--strict_images: 1 unreadable image(s)" in capsys.readouterr().err and not strict.exists()


def test_id_column_text_columns_and_overwrite(runs, tmp_path):
    run_dir, data, expected, _ = runs.case("text")
    renamed = tmp_path / "renamed.parquet"
    frame = pd.read_csv(data).rename(columns={"text": "body"})
    frame.insert(0, "tweet_id", [f"t{i}" for i in range(len(frame))])
    frame.to_parquet(renamed)
    output = tmp_path / "preds.csv"
    output.write_text("old\n")
    argv = [run_dir, "--input", renamed, "--output", output, "--text_columns", "body", "--id_column", "tweet_id"]
    assert predict_cli(*argv, "--overwrite") == 0
    result = pd.read_csv(output)
    assert list(result.columns) == ["tweet_id", "label", *TEXT_LABELS]
    assert list(result["tweet_id"]) == [f"t{i}" for i in range(len(frame))]
    np.testing.assert_allclose(result[TEXT_LABELS].to_numpy(), np.stack(list(expected.values())), atol=1e-5)


# --- the length inputs are cut at: the one the run resolved -----------------------------------------------------

LENGTH_SOURCES = [
    # (what, resolved_settings.json, run_args.yaml settings, the folder predict is given, length)
    ("the resolved auto", {"max_seq_length": {"given": "auto", "used": 24, "why": "auto: ..."}}, {}, ".", 24),
    ("resolved wins over run_args", {"max_seq_length": {"given": "40", "used": 40, "why": "given"}}, {"max_seq_length": "40"}, ".", 40),
    ("merged/ reads its run's", {"max_seq_length": {"given": "auto", "used": 16, "why": "auto: ..."}}, {}, "merged", 16),
    ("a run from before auto: run_args", {"pooling": {"given": "auto", "used": "cls", "why": "..."}}, {"max_seq_length": 64}, ".", 64),
    ("before auto, flag not given: 128", {}, {}, ".", 128),
]  # fmt: skip


@pytest.mark.parametrize(
    "settings,run_args,folder,length", [c[1:] for c in LENGTH_SOURCES], ids=[c[0] for c in LENGTH_SOURCES]
)
def test_predict_cuts_at_the_runs_resolved_length(tmp_path, settings, run_args, folder, length):
    from ftpeft.predict.runs import SavedRun
    from ftpeft.predict.text import max_seq_length

    (tmp_path / "merged").mkdir()
    (tmp_path / "resolved_settings.json").write_text(json.dumps(settings))
    run_dir = (tmp_path / folder).resolve()
    assert max_seq_length(SavedRun("text", run_dir, run_dir, run_args)) == length


# --- refusals: one line, exit 2, nothing written ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, make_argv, message",
    [
        ("text", lambda r, d, t: [t / "nope", "--input", d], "nope: no such directory"),
        ("text", lambda r, d, t: [d.parent, "--input", d], "not an ftpeft output dir"),
        ("text", lambda r, d, t: [r, "--input", t / "missing.csv"], "--input .*missing.csv: no such file"),
        ("text", lambda r, d, t: [r, "--input", _write(t / "empty.csv", "text,label\n")], "empty.csv has no data rows"),
        (
            "text",
            lambda r, d, t: [r, "--input", _write(t / "x.csv", "body\nhi\n")],
            "cannot tell which column holds the text; pass --text_columns",
        ),
        ("text", lambda r, d, t: [r, "--input", d, "--text_columns", "body"], "lacks --text_columns \\['body'\\]"),
        ("text", lambda r, d, t: [r, "--input", _write(t / "x.txt", "a\n")], "unknown format '.txt'"),
        ("text", lambda r, d, t: [r, "--input", t], "is a folder; a text model scores a csv"),
        ("text", lambda r, d, t: [r, "--input", d, "--batch_size", "0"], "--batch_size must be >= 1"),
        ("timm", lambda r, d, t: [r, "--input", _write(t / "x.csv", "text\nhi\n")], "is a file; an image model"),
        ("timm", lambda r, d, t: [r, "--input", t], "no image files"),
        ("knowledge", lambda r, d, t: [r, "--input", _drop_column(d, t, "features")], "lacks the column 'features'"),
        ("knowledge", lambda r, d, t: [r, "--input", _drop_column(d, t, "entities")], "--entity_column entities"),
        ("knowledge", lambda r, d, t: [_copy_without(r, t, "knowledge_keys.txt"), "--input", d], "keys.txt: missing"),
        ("adapter", lambda r, d, t: [_copy_without(r, t, "label_names.json"), "--input", d], "without label_names"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys, kind, make_argv, message):
    import re

    run_dir, data, _, _ = runs.case(kind)
    before = snapshot(run_dir)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    output = tmp_path / "preds.csv"
    assert predict_cli(*make_argv(run_dir, data, scratch), "--output", output) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and re.search(message, err), err
    assert not output.exists() and snapshot(run_dir) == before


def test_an_existing_output_is_never_replaced_without_overwrite(runs, tmp_path, capsys):
    run_dir, data, _, _ = runs.case("text")
    output = _write(tmp_path / "preds.csv", "mine\n")
    assert predict_cli(run_dir, "--input", data, "--output", output) == 2
    assert "--overwrite" in capsys.readouterr().err and output.read_text() == "mine\n"


def _write(path, text):
    path.write_text(text)
    return path


def _copy_without(run_dir, scratch, name):
    return shutil.copytree(run_dir, scratch / "run", ignore=shutil.ignore_patterns(name))


def _drop_column(data, scratch, column):
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    return _write(
        scratch / "input.jsonl", "".join(json.dumps({k: v for k, v in r.items() if k != column}) + "\n" for r in rows)
    )


# --- accelerate launch: 2 ranks, one merged CSV equal to 1 process's -------------------------------------------


@pytest.mark.slow
def test_two_ranks_write_the_same_csv_as_one_process(runs, tmp_path):
    run_dir, data, _, _ = runs.case("text")
    odd = _write(tmp_path / "odd.csv", "".join(data.read_text().splitlines(keepends=True)[:16]))  # 15 rows: uneven
    one = tmp_path / "one.csv"
    assert predict_cli(run_dir, "--input", odd, "--output", one, "--batch_size", "4") == 0
    two = tmp_path / "two.csv"
    config = str(ROOT / "accelerate_configs/cpu_ddp.yaml")
    result = run([accelerate_bin(), "launch", "--config_file", config, "-m", "ftpeft.cli", "predict", str(run_dir),
                  "--input", str(odd), "--output", str(two), "--batch_size", "4"], timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote 15 predictions") == 1  # the main process alone writes
    one_frame, two_frame = pd.read_csv(one), pd.read_csv(two)
    assert list(two_frame.columns) == list(one_frame.columns) and len(two_frame) == 15
    assert list(two_frame["id"]) == list(one_frame["id"]) and list(two_frame["label"]) == list(one_frame["label"])
    np.testing.assert_allclose(two_frame[TEXT_LABELS].to_numpy(), one_frame[TEXT_LABELS].to_numpy(), atol=1e-6)


def test_the_documented_commands_parse_and_show_the_csv_shape():
    import shlex

    from ftpeft.predict.job import parse_predict_args
    from ftpeft.predict.writer import prediction_columns

    page = (ROOT / "docs" / "recipes" / "predict_app_push.md").read_text()
    section = page.split("## Predict: `ftpeft predict`\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith(("ftpeft predict ", "accelerate launch "))]
    commands = [line.split(" predict ", 1)[1].split("#")[0] for line in lines]
    assert len(commands) == 3
    for command in commands:
        args = parse_predict_args(shlex.split(command))
        assert args.run_dir.startswith("outputs/") and args.output.endswith(".csv")
    assert "\n" + ",".join(prediction_columns("id", TEXT_LABELS)) + "\n" in section


class RecordingLibc:
    """A C library stand-in whose mallopt records its calls and answers ``answer`` (glibc: 1 applied, 0 refused)."""

    def __init__(self, answer: int):
        self.calls, self.answer = [], answer

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return self.answer


@pytest.mark.parametrize(
    "libc, applied, calls",
    [
        (RecordingLibc(1), True, [(-3, 32 * 2**20), (-1, 2**30)]),  # M_MMAP_THRESHOLD, then M_TRIM_THRESHOLD
        (RecordingLibc(0), False, [(-3, 32 * 2**20)]),  # refused: the trim threshold is not touched
        (object(), False, None),  # no mallopt (not glibc): nothing changes
    ],
    ids=["glibc", "refused", "no-mallopt"],
)
def test_cpu_prediction_keeps_freed_tensor_memory_where_glibc_allows(libc, applied, calls):
    from ftpeft.predict.job import reuse_freed_tensor_memory

    assert reuse_freed_tensor_memory(libc) is applied
    if calls is not None:
        assert libc.calls == calls
