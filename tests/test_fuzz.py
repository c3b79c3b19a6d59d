"""Property-based fuzzing of every entry point (issue 17 item 4): generated argument lists, data files and damaged
model, tokenizer, image and feature files, on tiny models.

The property (helpers.assert_clean_outcome): exit 0 or 2, never a traceback, an error is one line, no partial output
directory is left behind, and no file the user had changes. Each failure the fuzzer found is a named ``@example``
(or a plain case) below, fixed in ftpeft.

CI runs the derandomised "ci" profile (tests/conftest.py: the same few examples per test, a few minutes in all);
``HYPOTHESIS_PROFILE=long pytest tests/test_fuzz.py`` runs many more examples and the ``fuzz_long`` tests.
"""

from __future__ import annotations

import math
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import (
    CLASSES,
    DAMAGES,
    RECIPES,
    TABLE_KEYS,
    TEXT_RUN_FILES,
    TIMM_ARGS,
    TIMM_MODEL,
    TRACEBACK,
    assert_clean_outcome,
    call_entry_point,
    damage_file,
    load_recipe,
    make_tiny_text_model,
    make_wordpiece_tokenizer,
    run,
    snapshot,
    tiny_args,
    write_class_folders,
    write_glove,
    write_kaggle_layout,
    write_knowledge_dataset,
    write_npy,
    write_safetensors,
)
from hypothesis import example, given
from hypothesis import strategies as st

from ftpeft import cli

bert_cls = load_recipe("bert_cls")
image_cls = load_recipe("image_cls")
knowledge_cls = load_recipe("knowledge_cls")
extract_features = load_recipe("extract_features")
train_head = load_recipe("train_head")

# what every successful Trainer run writes, whatever its kind (LoRA or full, text or image)
RUN_FILES = ("metrics.json", "README.md", "run_args.yaml")

# --- argument values: valid ones (kept cheap: a run trains at most a few steps) and invalid ones ------------------

GARBAGE = st.sampled_from(["", " ", "nan", "inf", "-inf", "1e309", "abc", "1,5", "0x10", "None", "[]", "--", "é"])


def _number_text(value) -> str:
    return repr(value) if isinstance(value, float) and math.isfinite(value) else str(value)


def numbers(valid: st.SearchStrategy, cap: float | None = None) -> st.SearchStrategy[str]:
    """A flag's value as a command-line token: mostly ``valid`` values, else any number or non-number. ``cap``: a
    size or step count that costs time or memory; no generated number above it (10**12 steps is valid, not cheap)."""
    anything = st.one_of(
        st.integers(-(10**12), 10**12),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0, -1, 1, 0.5, 1.0, 1e-300, 2**63]),
        GARBAGE,
    )
    if cap is not None:
        anything = anything.filter(lambda v: isinstance(v, str) or not (v > cap))  # NaN passes
    return st.one_of(valid, valid, anything).map(_number_text)


def choices(values, invalid=("", "x", "ALL", "none ", "1.5")) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(values), st.sampled_from(invalid))


# the TrainingArguments flags of validation.TRAINING_RULES and ftpeft's own flags; max_steps/epochs stay tiny
TRAINER_FLAGS = {
    "learning_rate": numbers(st.floats(1e-6, 1.0)),
    "weight_decay": numbers(st.floats(0, 1)),
    "num_train_epochs": st.one_of(numbers(st.floats(0.01, 0.1), cap=0.1), choices(["auto", "AUTO"], ("aut", "auto1"))),
    "early_stopping_patience": numbers(st.integers(1, 3), cap=10**4),
    "auto_max_epochs": numbers(st.floats(0.01, 0.1), cap=0.1),
    "auto_max_steps": numbers(st.sampled_from([1, 2]), cap=2),
    "metric_for_best_model": choices(["accuracy", "eval_macro_f1", "loss"], ("bleu", "", "eval_")),
    "max_steps": numbers(st.sampled_from([1, 2]), cap=2),
    "per_device_train_batch_size": numbers(st.integers(1, 64), cap=10**4),
    "per_device_eval_batch_size": numbers(st.integers(1, 64), cap=10**4),
    "gradient_accumulation_steps": numbers(st.integers(1, 3), cap=3),
    "warmup_steps": numbers(st.one_of(st.integers(0, 5), st.floats(0, 0.99)), cap=10**6),
    "logging_steps": numbers(st.integers(1, 5), cap=10**4),
    "max_grad_norm": numbers(st.floats(0, 10)),
    "label_smoothing_factor": numbers(st.floats(0, 0.99)),
    "adam_beta1": numbers(st.floats(0, 0.999)),
    "adam_beta2": numbers(st.floats(0, 0.999)),
    "adam_epsilon": numbers(st.floats(1e-12, 1e-3)),
    "seed": numbers(st.integers(0, 2**32 - 1)),
    "lr_scheduler_type": choices(["linear", "cosine", "constant", "constant_with_warmup"]),
}
TUNING_FLAGS = {
    "unfreeze_last": st.one_of(numbers(st.integers(-1, 6)), choices(["all", "ALL", "0"])),
    "head_lr": numbers(st.floats(1e-6, 1.0)),
    "layer_decay": numbers(st.floats(0.01, 1.0)),
    "lora_r": numbers(st.integers(1, 8), cap=64),
    "lora_alpha": numbers(st.integers(1, 32), cap=10**6),
    "lora_dropout": numbers(st.floats(0, 0.99)),
    "lora_lr": numbers(st.floats(1e-6, 1.0)),
    "lora_layers": numbers(st.integers(1, 6), cap=10**4),
    "lp_fraction": numbers(st.floats(0.01, 0.99)),
    "unfreeze_every": numbers(st.integers(1, 3), cap=10**4),
    "class_weights": choices(["balanced", "none"], invalid=("", "Balanced", "missing.json")),
    "cache_dtype": choices(["float16", "bfloat16", "float32"]),
}
TUNING_SWITCHES = ("use_peft", "lp_ft", "gradual_unfreeze", "cache_frozen", "train_embeddings", "merge_adapter")
TEXT_FLAGS = {
    **TRAINER_FLAGS,
    **TUNING_FLAGS,
    "max_seq_length": numbers(st.integers(1, 600), cap=10**4),
    "pooling": choices(["auto", "cls", "mean"]),
    "validation_split_percentage": numbers(st.integers(1, 99)),
    "max_train_samples": numbers(st.integers(1, 80), cap=10**6),
    "max_eval_samples": numbers(st.integers(1, 20)),
    "max_test_samples": numbers(st.integers(1, 20)),
}


@st.composite
def flag_lists(draw, flags: dict, switches: tuple[str, ...] = (), most: int = 4) -> list[str]:
    """A few of ``flags`` with generated values (either spelling: --lora_r / --lora-r), plus some ``switches``."""
    names = draw(st.lists(st.sampled_from(sorted(flags)), max_size=most, unique=True))
    argv = []
    for name in names:
        spelled = name.replace("_", "-") if draw(st.booleans()) else name
        value = draw(flags[name])
        argv += [f"--{spelled}={value}"] if value.startswith("-") else [f"--{spelled}", value]
    if switches:
        argv += [f"--{switch}" for switch in draw(st.lists(st.sampled_from(switches), max_size=2, unique=True))]
    return argv


def scratch() -> Path:
    """A fresh folder for one generated example (function-scoped fixtures do not reset between examples)."""
    return Path(tempfile.mkdtemp(prefix="fuzz-"))


# --- bert_cls: arguments -------------------------------------------------------------------------------------------


@pytest.mark.slow
@given(extra=flag_lists(TEXT_FLAGS, TUNING_SWITCHES))
def test_text_recipe_arguments(tiny_bert_dir, text_csv_dir, extra):
    work = scratch()
    try:
        out = work / "out"
        user = {Path(tiny_bert_dir): snapshot(Path(tiny_bert_dir)), text_csv_dir: snapshot(text_csv_dir)}
        argv = tiny_args(tiny_bert_dir, text_csv_dir, out, "--max_steps", "1", *extra)
        outcome = call_entry_point(bert_cls.main, argv)
        assert_clean_outcome(outcome, user, out, RUN_FILES)
    finally:
        shutil.rmtree(work, ignore_errors=True)


_unused = (TEXT_RUN_FILES, example)


# --- bert_cls: data files ------------------------------------------------------------------------------------------

CELL_TEXT = st.one_of(
    st.sampled_from(["good film", "bad plot", "", " ", "\t", "nan", "NULL", "0", "\n", '"', ",", "é ü 中文 🙂"]),
    st.text(max_size=30),
    st.integers(1000, 20000).map(lambda n: "good film " * n),  # very long cells
)
LABEL = st.one_of(
    st.sampled_from(["pos", "neg", "pos", "neg", "", " ", "nan", "0", "1", "1.5", "-1", "Pos", "pos "]),
    st.integers(-3, 3),
    st.text(max_size=5),
)
JSON_VALUE = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.lists(st.integers(), max_size=2))
ENCODINGS = ("utf-8", "utf-8", "utf-8", "utf-8-sig", "latin-1", "utf-16", "cp1252")  # mostly readable


@st.composite
def text_tables(draw) -> tuple[str, bytes]:
    """A training file: (suffix, bytes). Rows of generated text/label cells (a single row or class possible), as
    CSV in some encoding, JSON records or JSON lines, with now and then a missing, extra or wrongly typed column."""
    import csv
    import io
    import json

    good_row = st.tuples(
        st.sampled_from(["good film", "bad plot", "great story", "awful actor"]), st.sampled_from(["pos", "neg"])
    )
    rows = draw(st.lists(st.one_of(good_row, good_row, good_row, st.tuples(CELL_TEXT, LABEL)), min_size=1, max_size=12))
    header = draw(st.sampled_from([("text", "label")] * 4 + [("text",), ("label", "text"), ("t", "label")]))
    fmt = draw(st.sampled_from(["csv", "csv", "json", "jsonl"]))
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        for text, label in rows:
            record = {"text": text, "label": label, "t": text}
            writer.writerow([record[column] for column in header])
        return ".csv", buffer.getvalue().encode(draw(st.sampled_from(ENCODINGS)), errors="replace")
    records = []
    for text, label in rows:
        record = {"text": text, "label": label, "t": text}
        record = {column: record[column] for column in header}
        if draw(st.integers(0, 4)) == 0:  # a wrongly typed or missing cell
            column = draw(st.sampled_from(header))
            record[column] = draw(JSON_VALUE)
        records.append(record)
    if fmt == "json":
        return ".json", json.dumps(records).encode()
    return ".jsonl", "".join(json.dumps(record) + "\n" for record in records).encode()


MIXED_LABEL_TYPES = (
    b'[{"label": null, "text": "good film"}, {"label": "pos", "text": "bad"}, {"label": false, "text": "a"}]'
)
THREE_CLASSES = b"text,label\n" + b"".join(
    b"%s film,%s\n" % (w, c) for w in (b"good", b"bad", b"fine", b"poor") for c in (b"a", b"b", b"c")
)
LONG_CELL = b"text,label\ngood film,pos\n" + b"good film " * 600 + b",neg\n"


@pytest.mark.slow
@example(train=(".json", MIXED_LABEL_TYPES), validation=None, long_seq=False).via(
    "found: a JSON label column of mixed types -> ArrowNotImplementedError"
)
@example(train=(".csv", LONG_CELL), validation=None, long_seq=True).via(
    "found: --max_seq_length 1000 > the model's 512 positions -> RuntimeError in forward"
)
@example(train=(".csv", THREE_CLASSES), validation=None, long_seq=False).via(
    "found: 3 classes on a 2-label checkpoint -> RuntimeError (the head did not fit)"
)
@given(train=text_tables(), validation=st.one_of(st.none(), st.none(), text_tables()), long_seq=st.booleans())
def test_text_recipe_data_files(tiny_bert_dir, text_csv_dir, train, validation, long_seq):
    work = scratch()
    try:
        out, data = work / "out", work / "data"
        data.mkdir()
        (data / f"train{train[0]}").write_bytes(train[1])
        argv = tiny_args(tiny_bert_dir, text_csv_dir, out, "--train_file", str(data / f"train{train[0]}"))
        argv = [a for a in argv if a not in ("--test_file", str(text_csv_dir / "test.csv"))]
        if validation is None:
            argv = [a for a in argv if a not in ("--validation_file", str(text_csv_dir / "validation.csv"))]
        else:
            (data / f"validation{validation[0]}").write_bytes(validation[1])
            argv += ["--validation_file", str(data / f"validation{validation[0]}")]
        if long_seq:  # longer than the tiny model's 512 positions
            argv += ["--max_seq_length", "1000"]
        user = {Path(tiny_bert_dir): snapshot(Path(tiny_bert_dir)), data: snapshot(data)}
        outcome = call_entry_point(bert_cls.main, [*argv, "--max_steps", "1"])
        assert_clean_outcome(outcome, user, out, RUN_FILES)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# label sets and numbers: the label-shape flags, tables whose label cells are sets, numbers or garbage, and headers
# that repeat a name or hold a column named like the encoded labels
LABEL_FLAGS = {
    "problem_type": choices(["auto", "multi_label", "regression", "single_label", "multi_label_classification"]),
    "label_separator": st.sampled_from([",", " ", ";", "", "|"]),
    "threshold": st.one_of(choices(["auto"]), numbers(st.floats(0.01, 0.99))),
    "min_threshold_positives": numbers(st.integers(1, 5)),
    "pos_weight": choices(["none", "balanced"], ("", "nope.json", "BALANCED")),
    "label_column": st.sampled_from(["tags", "score", "label", "labels", "missing"]),
}
LABEL_CELL = st.one_of(
    st.sampled_from(["praise,film", "film", "story,praise", "praise", " , ", "", "nan", "1.5", "-2", "0", "1"]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)


@st.composite
def label_tables(draw) -> bytes:
    """A training CSV with text, tags (a set joined by ','), score (a number) and 0/1 columns, any cell possibly
    garbage, and now and then a repeated header name or a column named 'labels'."""
    import csv
    import io

    header = ["text", "tags", "score", "a", "b"]
    header += draw(st.sampled_from([[], [], [], ["text"], ["labels"], ["tags"]]))
    rows = []
    for i in range(draw(st.integers(1, 12))):
        good = {"text": ["good film", "bad plot", "great story", "awful actor"][i % 4], "tags": ["praise,film", "story"][i % 2],
                "score": str(1.5 - i % 3), "a": str(i % 2), "b": str((i // 2) % 2), "labels": "x"}  # fmt: skip
        if draw(st.integers(0, 3)) == 0:
            good[draw(st.sampled_from(["tags", "score", "a", "b", "text"]))] = draw(LABEL_CELL)
        rows.append([good[column] for column in header])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode()


@pytest.mark.slow
@example(train=b"text,text,label\ngood,bad,pos\nbad,good,neg\n", extra=[]).via(
    "issue 24: two columns named text trained on one of them without a word"
)
@example(train=b"text,label,labels\ngood,pos,-2\nbad,neg,1\n", extra=[]).via(
    "issue 24: a 'labels' column beside --label_column -> ValueError: Invalid string class label -2"
)
@given(train=label_tables(), extra=flag_lists(LABEL_FLAGS, ("allow_empty_labels",), most=3))
def test_label_shapes_of_any_table(tiny_bert_dir, text_csv_dir, train, extra):
    work = scratch()
    try:
        out, data = work / "out", work / "data"
        data.mkdir()
        (data / "train.csv").write_bytes(train)
        argv = tiny_args(tiny_bert_dir, text_csv_dir, out, "--train_file", str(data / "train.csv"))
        drop = (
            "--test_file",
            str(text_csv_dir / "test.csv"),
            "--validation_file",
            str(text_csv_dir / "validation.csv"),
        )
        argv = [a for a in argv if a not in drop]
        if "--label_column" not in extra and "--label-column" not in extra:
            extra = (
                [*extra, "--label_column", "tags", "--label_separator", ","]
                if "--label_separator" not in extra
                else extra
            )
        user = {Path(tiny_bert_dir): snapshot(Path(tiny_bert_dir)), data: snapshot(data)}
        outcome = call_entry_point(bert_cls.main, [*argv, *extra, "--max_steps", "1"])
        assert_clean_outcome(outcome, user, out, RUN_FILES)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
def test_found_csv_not_in_utf8_says_so(tiny_bert_dir, tmp_path, encoding):
    """Found by the fuzzer: a CSV in another encoding was 'could not read it as csv (An error occurred while
    generating the dataset)', which does not say what is wrong."""
    (tmp_path / "train.csv").write_bytes("text,label\ncafé good,pos\nbad plot,neg\n".encode(encoding))
    argv = ["--model_name_or_path", str(tiny_bert_dir), "--train_file", str(tmp_path / "train.csv"),
            "--output_dir", str(tmp_path / "out"), "--max_steps", "1"]  # fmt: skip
    outcome = call_entry_point(bert_cls.main, argv)
    assert_clean_outcome(outcome, {}, tmp_path / "out")
    assert outcome.code == 2 and "could not read it as csv (not UTF-8 text; save it as UTF-8)" in outcome.stderr


# --- bert_cls: damaged model and tokenizer files -------------------------------------------------------------------

MODEL_FILES = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json")
FILE_DAMAGE = st.tuples(st.sampled_from(DAMAGES), st.floats(0, 1), st.binary(min_size=1, max_size=64))
# a JSON value where a config expects a number, string or list: the "broken config.json" that still parses
CONFIG_KEYS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "max_position_embeddings", "model_type",
    "architectures", "hidden_act", "layer_norm_eps", "type_vocab_size", "pad_token_id", "hidden_dropout_prob",
)  # fmt: skip
TOKENIZER_KEYS = ("model_max_length", "tokenizer_class", "unk_token", "pad_token", "cls_token", "backend")


def edit_json(path: Path, key: str, value) -> None:
    import json

    data = json.loads(path.read_text())
    if value is _DELETE:
        data.pop(key, None)
    else:
        data[key] = value
    path.write_text(json.dumps(data))


_DELETE = object()
JSON_EDIT_VALUE = st.one_of(
    st.just(_DELETE),
    JSON_VALUE,
    st.sampled_from([0, -1, 1, 3, 10**9, "", "bert", "gpt2", "nope", ["BertModel"]]),
)


@pytest.mark.slow
@given(
    damage=st.one_of(
        st.tuples(st.just("bytes"), st.sampled_from(MODEL_FILES), FILE_DAMAGE),
        st.tuples(st.just("config"), st.sampled_from(CONFIG_KEYS), JSON_EDIT_VALUE),
        st.tuples(st.just("tokenizer_config"), st.sampled_from(TOKENIZER_KEYS), JSON_EDIT_VALUE),
    )
)
@example(damage=("config", "hidden_size", _DELETE)).via("found: weights that do not fit config.json -> RuntimeError")
@example(damage=("config", "hidden_size", None)).via("found: a config value of the wrong type -> StrictDataclass error")
@example(damage=("tokenizer_config", "tokenizer_class", False)).via("found: a non-string tokenizer_class -> TypeError")
@example(damage=("config", "hidden_size", 0)).via("found: hidden_size 0 -> ZeroDivisionError while building the model")
@example(damage=("tokenizer_config", "model_max_length", [])).via("found: model_max_length [] -> TypeError at encoding")
@example(damage=("tokenizer_config", "pad_token", _DELETE)).via("found: no pad_token -> ValueError at the first batch")
def test_text_recipe_damaged_model_folder(tiny_bert_dir, text_csv_dir, damage):
    work = scratch()
    try:
        out, model = work / "out", work / "model"
        shutil.copytree(tiny_bert_dir, model)
        kind, name, how = damage
        if kind == "bytes":
            damage_file(model / name, *how)
        else:
            edit_json(model / f"{kind}.json", name, how)
        user = {model: snapshot(model), text_csv_dir: snapshot(text_csv_dir)}
        outcome = call_entry_point(bert_cls.main, tiny_args(model, text_csv_dir, out, "--max_steps", "1"))
        assert_clean_outcome(outcome, user, out, RUN_FILES)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.fuzz_long
@given(
    extra=flag_lists(TEXT_FLAGS, TUNING_SWITCHES, most=6),
    train=text_tables(),
    damage=st.one_of(st.none(), st.tuples(st.sampled_from(MODEL_FILES), FILE_DAMAGE)),
)
def test_text_recipe_everything_at_once(tiny_bert_dir, text_csv_dir, extra, train, damage):
    """The long lane only: generated flags, a generated training file and a damaged model file in one run."""
    work = scratch()
    try:
        out, data, model = work / "out", work / "data", work / "model"
        data.mkdir()
        shutil.copytree(tiny_bert_dir, model)
        if damage is not None:
            damage_file(model / damage[0], *damage[1])
        (data / f"train{train[0]}").write_bytes(train[1])
        argv = ["--model_name_or_path", str(model), "--train_file", str(data / f"train{train[0]}"),
                "--output_dir", str(out), "--max_steps", "1", "--eval_strategy", "no", "--save_strategy", "no",
                "--validation_split_percentage", "25", *extra]  # fmt: skip
        user = {model: snapshot(model), data: snapshot(data)}
        assert_clean_outcome(call_entry_point(bert_cls.main, argv), user, out, RUN_FILES)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- image_cls: arguments and damaged images -----------------------------------------------------------------------

IMAGE_FLAGS = {
    **TRAINER_FLAGS,
    **TUNING_FLAGS,
    "image_size": numbers(st.integers(8, 48), cap=64),
    "crop_pct": numbers(st.floats(0.05, 1.0)),
    "hflip": numbers(st.floats(0, 1)),
    "rotation_degrees": numbers(st.floats(0, 180)),
    "crop_scale_min": numbers(st.floats(0.01, 1.0)),
    "color_jitter": numbers(st.floats(0, 2)),
    "drop_rate": numbers(st.floats(0, 0.99)),
    "validation_split_percentage": numbers(st.integers(1, 99)),
}


def odd_image(path: Path, kind: str) -> None:
    """An image file that decodes but is unusual: 1 pixel, grayscale, RGBA, 16-bit, palette, a tall strip."""
    import numpy as np
    from PIL import Image

    if kind == "one_pixel":
        Image.new("RGB", (1, 1), (200, 10, 10)).save(path, format="JPEG")
    elif kind == "grayscale":
        Image.new("L", (20, 20), 128).save(path, format="JPEG")
    elif kind == "rgba_png":
        Image.new("RGBA", (20, 20), (1, 2, 3, 4)).save(path, format="PNG")  # a PNG behind a .jpg name
    elif kind == "sixteen_bit":
        Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(path, format="PNG")
    elif kind == "palette":
        Image.new("P", (20, 20), 3).save(path, format="GIF")
    elif kind == "strip":
        Image.new("RGB", (2000, 1), (0, 0, 255)).save(path, format="JPEG")


ODD_IMAGES = ("one_pixel", "grayscale", "rgba_png", "sixteen_bit", "palette", "strip")
IMAGE_DAMAGE = st.one_of(
    st.tuples(st.just("bytes"), FILE_DAMAGE),
    st.tuples(st.just("odd"), st.sampled_from(ODD_IMAGES)),
    st.tuples(st.just("stray"), st.sampled_from(["empty_folder", "text_file", "empty_class"])),
)


def damage_image_folders(root: Path, damages) -> None:
    """Apply generated damage to the images under ``root`` (class folders of write_class_folders)."""
    images = sorted(root.rglob("*.jpg"))
    for index, (kind, how) in damages:
        target = images[index % len(images)]
        if not target.exists():
            continue
        if kind == "bytes":
            damage_file(target, *how)
        elif kind == "odd":
            odd_image(target, how)
        elif how == "empty_folder":
            (root / "zz_empty").mkdir(exist_ok=True)
        elif how == "text_file":
            (target.parent / "notes.txt").write_text("not an image")
        else:  # every image of one class unreadable
            for other in target.parent.glob("*.jpg"):
                other.write_bytes(b"\xff\xd8 broken")


@pytest.mark.slow
@given(
    damages=st.lists(st.tuples(st.integers(0, 100), IMAGE_DAMAGE), max_size=3),
    extra=flag_lists(IMAGE_FLAGS, ("strict_images", "lp_ft", "cache_frozen", "use_peft"), most=2),
)
@example(damages=[], extra=[]).via("found: 4 validation images < one eval batch, dropped by drop_last -> sklearn error")
@example(damages=[(0, ("bytes", ("truncate", 0.75, b"\x00")))], extra=[]).via(
    "found: a truncated JPEG passed verify() and failed mid-training (OSError: image file is truncated)"
)
def test_image_recipe_images_and_arguments(damages, extra):
    work = scratch()
    try:
        out, images = work / "out", write_class_folders(work / "images", per_class=3)
        damage_image_folders(images, damages)
        user = {images: snapshot(images)}
        argv = ["--image_dir", str(images), *TIMM_ARGS, "--output_dir", str(out), "--max_steps", "1",
                "--per_device_train_batch_size", "4", "--eval_strategy", "no", "--save_strategy", "no",
                "--validation_split_percentage", "34", *extra]  # fmt: skip
        outcome = call_entry_point(image_cls.main, argv)
        assert_clean_outcome(outcome, user, out, RUN_FILES)
    finally:
        shutil.rmtree(work, ignore_errors=True)


KAGGLE_IDS = [f"{name[:2]}{i:03d}" for name in CLASSES for i in range(3)]  # write_kaggle_layout's, 3 per class


@st.composite
def labels_csvs(draw) -> bytes:
    """A --labels_csv: write_kaggle_layout's rows, some cells odd (empty, unknown id, a path, long, non-ASCII), in
    some encoding, with now and then another header or a ragged row."""
    import csv
    import io

    rows = [[image_id, CLASSES[i // 3]] for i, image_id in enumerate(KAGGLE_IDS)]
    odd = st.one_of(st.sampled_from(["", " ", "nope", "../x", "be000.jpg", "é", "x" * 300]), st.text(max_size=8))
    for _ in range(draw(st.integers(0, 3))):
        row = rows[draw(st.integers(0, len(rows) - 1))]
        row[draw(st.integers(0, 1))] = draw(odd)
    if draw(st.integers(0, 5)) == 0:
        rows.append(draw(st.lists(odd, max_size=4)))  # a ragged row
    header = draw(st.sampled_from([["id", "breed"]] * 4 + [["breed", "id"], ["id"], ["image", "label"]]))
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *rows])
    return buffer.getvalue().encode(draw(st.sampled_from(ENCODINGS)), errors="replace")


@pytest.mark.slow
@example(labels=b"\xff\xfei\x00d\x00").via(
    "a labels CSV that is not UTF-8 (the text files' finding) -> UnicodeDecodeError"
)
@example(labels=b'id,breed\n"unclosed,pug\n').via("a CSV pandas cannot parse")
@given(labels=labels_csvs())
@example(labels=b"breed,id\nbe000,beagle\nco000,collie\n").via(
    "found: columns swapped, no row names an image -> sklearn ValueError in the validation split"
)
def test_image_recipe_labels_csv(labels):
    work = scratch()
    try:
        out, root = work / "out", work / "kaggle"
        csv_path, images = write_kaggle_layout(root, per_class=3, corrupt=False)
        csv_path.write_bytes(labels)
        user = {root: snapshot(root)}
        argv = ["--labels_csv", str(csv_path), "--image_dir", str(images), *TIMM_ARGS, "--output_dir", str(out),
                "--max_steps", "1", "--per_device_train_batch_size", "4", "--eval_strategy", "no",
                "--save_strategy", "no", "--validation_split_percentage", "34"]  # fmt: skip
        assert_clean_outcome(call_entry_point(image_cls.main, argv), user, out, RUN_FILES)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- knowledge_cls: knowledge tables, entity spans and feature columns ---------------------------------------------

TABLE_LINE = st.one_of(
    st.tuples(st.sampled_from(TABLE_KEYS + ["", " ", "good", "é", "a b"]), st.lists(st.floats(), max_size=5)).map(
        lambda kv: " ".join([kv[0], *map(str, kv[1])])
    ),
    st.text(max_size=20),
    st.sampled_from(["8 4", "1 1 1", "good 1 2 3 x", "good\t1\t2\t3\t4", "\n"]),
)


@st.composite
def knowledge_tables(draw, folder: Path) -> list[str]:
    """--knowledge_file value(s): a generated word2vec/GloVe text, or a good .npy/.safetensors/text table damaged."""
    kind = draw(st.sampled_from(["text", "npy", "safetensors", "glove"]))
    if kind == "text":
        path = folder / "kb.txt"
        path.write_text("\n".join(draw(st.lists(TABLE_LINE, max_size=6))) + "\n")
        return [str(path)]
    path = {"npy": write_npy, "safetensors": write_safetensors, "glove": write_glove}[kind](
        folder / {"npy": "kb.npy", "safetensors": "kb.safetensors", "glove": "kb.txt"}[kind]
    )
    victim = path.with_suffix(".txt") if kind == "npy" and draw(st.booleans()) else path
    damage_file(victim, *draw(FILE_DAMAGE))
    return [str(path)]


SPAN_VALUE = st.one_of(st.integers(-5, 60), st.none(), st.text(max_size=3), st.floats())


@st.composite
def knowledge_rows(draw) -> list[dict]:
    """The rows of write_knowledge_dataset with generated edits of the entity spans and the feature column."""
    import json

    with tempfile.TemporaryDirectory() as folder:
        rows = [json.loads(line) for line in write_knowledge_dataset(Path(folder) / "d.jsonl").read_text().splitlines()]
    for _ in range(draw(st.integers(0, 3))):
        row = rows[draw(st.integers(0, len(rows) - 1))]
        target = draw(st.sampled_from(["span", "spans", "features", "entity_id", "text"]))
        spans = row["entities"]
        if target == "span" and isinstance(spans, list) and spans and isinstance(spans[0], dict):
            row["entities"][0][draw(st.sampled_from(["start", "end", "key"]))] = draw(SPAN_VALUE)
        elif target == "spans":
            row["entities"] = draw(st.one_of(JSON_VALUE, st.just([{}]), st.just([{"start": 0}])))
        elif target == "features":
            row["features"] = draw(st.one_of(JSON_VALUE, st.lists(st.floats(), max_size=5)))
        elif target == "entity_id":
            row["entity_id"] = draw(st.one_of(JSON_VALUE, st.text(max_size=5)))
        else:
            row["text"] = draw(CELL_TEXT)
    return rows


INJECT_SETUPS = (
    ["--inject", "add", "--entity_column", "entities"],
    ["--inject", "add"],
    ["--inject", "concat", "--knowledge_column", "features"],
    ["--inject", "gate", "--knowledge_column", "entity_id"],
)
KNOWLEDGE_FLAGS = {
    "knowledge_dim": numbers(st.integers(1, 8), cap=10**4),
    "fusion_hidden_size": numbers(st.integers(1, 16), cap=64),
    "unknown_entity": choices(["zero", "learned"]),
}


@pytest.fixture(scope="module")
def tiny_kb_bert(tmp_path_factory) -> Path:
    """A 2-layer BertModel with the WordPiece tokenizer over the knowledge table's words."""
    directory = tmp_path_factory.mktemp("tiny_kb_bert")
    return Path(make_tiny_text_model(directory, num_layers=2, tokenizer=make_wordpiece_tokenizer(), head=False))


@pytest.mark.slow
@given(
    data=st.data(),
    rows=knowledge_rows(),
    mode=st.sampled_from(INJECT_SETUPS),
    extra=flag_lists(KNOWLEDGE_FLAGS, ("train_knowledge",), most=2),
)
def test_knowledge_recipe_tables_and_rows(tiny_kb_bert, data, rows, mode, extra):
    import json

    work = scratch()
    try:
        out, inputs = work / "out", work / "inputs"
        inputs.mkdir()
        tables = (
            data.draw(knowledge_tables(inputs)) if data.draw(st.booleans()) else [str(write_glove(inputs / "g.txt"))]
        )
        (inputs / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        user = {inputs: snapshot(inputs), tiny_kb_bert: snapshot(tiny_kb_bert)}
        argv = ["--model_name_or_path", str(tiny_kb_bert), "--train_file", str(inputs / "train.jsonl"),
                "--output_dir", str(out), "--max_steps", "1", "--per_device_train_batch_size", "4",
                "--validation_split_percentage", "25", "--eval_strategy", "no", "--save_strategy", "no",
                "--knowledge_file", *tables, *mode, *extra]  # fmt: skip
        outcome = call_entry_point(knowledge_cls.main, argv)
        assert_clean_outcome(outcome, user, out, RUN_FILES)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("entities", [False, 3, {"start": 0}], ids=["a bool", "a number", "an object"])
def test_found_entity_cell_that_is_no_list(tiny_kb_bert, tmp_path, entities):
    """Found by the fuzzer: an --entity_column cell that is not a list of spans was a TypeError traceback."""
    import json

    path = write_knowledge_dataset(tmp_path / "train.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["entities"] = entities
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = ["--model_name_or_path", str(tiny_kb_bert), "--train_file", str(path), "--output_dir", str(tmp_path / "out"),
            "--max_steps", "1", "--validation_split_percentage", "25", "--knowledge_file",
            str(write_glove(tmp_path / "g.txt")), "--inject", "add", "--entity_column", "entities"]  # fmt: skip
    outcome = call_entry_point(knowledge_cls.main, argv)
    assert_clean_outcome(outcome, {}, tmp_path / "out")
    assert outcome.code == 2 and re.search(r"--entity_column entities: row \d+ is not a list of spans", outcome.stderr)


@pytest.mark.slow
def test_found_feature_cell_that_is_no_list(tiny_kb_bert, tmp_path):
    """Found by the fuzzer: a --knowledge_column cell of floats that is a bool was a TypeError traceback."""
    import json

    path = write_knowledge_dataset(tmp_path / "train.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["features"] = False
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = ["--model_name_or_path", str(tiny_kb_bert), "--train_file", str(path), "--output_dir", str(tmp_path / "out"),
            "--max_steps", "1", "--validation_split_percentage", "25", "--knowledge_file",
            str(write_glove(tmp_path / "g.txt")), "--inject", "concat", "--knowledge_column", "features"]  # fmt: skip
    outcome = call_entry_point(knowledge_cls.main, argv)
    assert_clean_outcome(outcome, {}, tmp_path / "out")
    assert outcome.code == 2 and re.search(r"--knowledge_column features: row \d+ has False", outcome.stderr)


# --- extract_features.py and train_head.py -------------------------------------------------------------------------

FEATURE_FLAGS = {
    "batch_size": numbers(st.integers(1, 16), cap=10**4),
    "image_size": numbers(st.integers(8, 48), cap=64),
    "crop_pct": numbers(st.floats(0.05, 1.0)),
    "validation_split_percentage": numbers(st.integers(1, 99)),
    "seed": numbers(st.integers(0, 2**32 - 1)),
    "layer": st.sampled_from(["pre_logits", "stages.1", "stages", "stem", "nope", "", "-1", "fc"]),
    "pooling": choices(["cls", "mean"]),
    "modality": choices(["image"], invalid=("", "Image", "audio")),
}


@pytest.mark.slow
@given(
    damages=st.lists(st.tuples(st.integers(0, 100), IMAGE_DAMAGE), max_size=3),
    extra=flag_lists(FEATURE_FLAGS, ("strict_images", "pretrained"), most=3),
)
@example(damages=[(0, ("bytes", ("overwrite", 0.375, b"\x00")))], extra=[]).via(
    "found: a JPEG with a broken data stream passed verify() and failed during extraction (OSError)"
)
@example(damages=[], extra=["--layer", "pre_logits"]).via(
    "found: --layer pre_logits (the default, as metadata.json names it) was 'no such module', mid-extraction"
)
@example(damages=[], extra=["--layer", "nope"]).via("an unknown --layer is refused before any image is read")
def test_extract_features_images_and_arguments(damages, extra):
    work = scratch()
    try:
        feature_dir, images = work / "features", write_class_folders(work / "images", per_class=3)
        damage_image_folders(images, damages)
        user = {images: snapshot(images)}
        argv = ["--image_dir", str(images), "--model_name_or_path", TIMM_MODEL, "--image_size", "32",
                "--feature_dir", str(feature_dir), "--validation_split_percentage", "34", *extra]  # fmt: skip
        outcome = call_entry_point(extract_features.main, argv)
        assert_clean_outcome(outcome, user, feature_dir, ("latest.txt",))
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory) -> Path:
    """An extraction of test_resnet features of 3 x 4 class-folder images: a cache root with one key folder."""
    root = tmp_path_factory.mktemp("feature_cache")
    images = write_class_folders(root / "images", per_class=4)
    extract_features.main(["--image_dir", str(images), "--model_name_or_path", TIMM_MODEL, "--image_size", "32",
                           "--feature_dir", str(root / "features"), "--validation_split_percentage", "34"])  # fmt: skip
    return root / "features"


HEAD_FLAGS = {
    "head": choices(["logreg", "linear_svm", "random_forest", "hist_gb", "linear", "mlp", "ridge"]),
    "regularization_c": numbers(st.floats(1e-4, 100)),
    "max_iter": numbers(st.integers(1, 50), cap=200),
    "n_estimators": numbers(st.integers(1, 10), cap=20),
    "hidden_size": numbers(st.integers(1, 32), cap=256),
    "epochs": numbers(st.integers(1, 3), cap=5),
    "learning_rate": numbers(st.floats(1e-5, 1.0)),
    "weight_decay": numbers(st.floats(0, 1)),
    "batch_size": numbers(st.integers(1, 32), cap=10**4),
    "seed": numbers(st.integers(0, 2**32 - 1)),
}
FEATURE_FILES = ("train-00000.safetensors", "validation-00000.safetensors", "metadata.json")
METADATA_KEYS = ("format", "key", "request", "feature_dim", "split_sizes", "shards", "label_names", "target")


@pytest.mark.slow
@given(
    damage=st.one_of(
        st.none(),
        st.tuples(st.just("bytes"), st.sampled_from(FEATURE_FILES), FILE_DAMAGE),
        st.tuples(st.just("metadata"), st.sampled_from(METADATA_KEYS), JSON_EDIT_VALUE),
        st.tuples(st.just("latest"), st.just("latest.txt"), FILE_DAMAGE),
    ),
    extra=flag_lists(HEAD_FLAGS, most=4),
)
@example(damage=("metadata", "request", _DELETE), extra=[]).via("found: metadata.json without 'request' -> KeyError")
@example(damage=("metadata", "label_names", ["one"]), extra=[]).via("label names fewer than the labels in the shards")
@example(damage=("latest", "latest.txt", ("overwrite", 0.0, b"\x80")), extra=[]).via(
    "found: a latest.txt that is not UTF-8 -> UnicodeDecodeError"
)
def test_train_head_feature_cache_and_arguments(feature_cache, damage, extra):
    work = scratch()
    try:
        out, features = work / "out", work / "features"
        shutil.copytree(feature_cache, features)
        key_folder = next(p for p in features.iterdir() if p.is_dir())
        if damage is not None:
            kind, name, how = damage
            if kind == "bytes":
                damage_file(key_folder / name, *how)
            elif kind == "metadata":
                edit_json(key_folder / "metadata.json", name, how)
            else:
                damage_file(features / name, *how)
        user = {features: snapshot(features)}
        outcome = call_entry_point(train_head.main, ["--features_dir", str(features), "--output_dir", str(out), *extra])
        assert_clean_outcome(outcome, user, out, ("metrics.json", "README.md", "run_args.yaml"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.slow
def test_found_nan_in_a_feature_shard(feature_cache, tmp_path):
    """Found by the fuzzer: bytes overwritten inside a shard whose header stays whole gave NaN features, and
    scikit-learn's 'Input X contains NaN' traceback."""
    from safetensors.numpy import load_file, save_file

    features = tmp_path / "features"
    shutil.copytree(feature_cache, features)
    shard = next(features.glob("*/train-00000.safetensors"))
    tensors = load_file(str(shard))
    tensors["features"][0, 0] = float("nan")
    save_file(tensors, str(shard))
    outcome = call_entry_point(
        train_head.main, ["--features_dir", str(features), "--output_dir", str(tmp_path / "out")]
    )
    assert_clean_outcome(outcome, {}, tmp_path / "out")
    assert outcome.code == 2 and "the train features hold NaN or inf values (a damaged shard)" in outcome.stderr


# --- the ftpeft commands: push, predict, ladder --------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_text_run(tiny_bert_dir, text_csv_dir, tmp_path_factory) -> Path:
    """A finished 1-step bert_cls run: what `ftpeft push` and `ftpeft predict` take."""
    out = tmp_path_factory.mktemp("finished") / "run"
    bert_cls.main(tiny_args(tiny_bert_dir, text_csv_dir, out, "--max_steps", "1"))
    return out


RUN_DIR_FILES = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "metrics.json",
                 "README.md", "run_args.yaml", "resolved_settings.json")  # fmt: skip
RUN_DIR_DAMAGE = st.one_of(
    st.none(),
    st.tuples(st.just("bytes"), st.sampled_from(RUN_DIR_FILES), FILE_DAMAGE),
    st.tuples(
        st.just("config"), st.sampled_from(CONFIG_KEYS + ("id2label", "label2id", "num_labels")), JSON_EDIT_VALUE
    ),
)


def damaged_run_copy(run: Path, folder: Path, damage) -> Path:
    copy = folder / "run"
    shutil.copytree(run, copy)
    if damage is not None:
        kind, name, how = damage
        if kind == "bytes":
            damage_file(copy / name, *how)
        else:
            edit_json(copy / "config.json", name, how)
    return copy


HUB_IDS = st.one_of(st.sampled_from(["me/model", "", "/", "a/b/c", "me/" + "x" * 200, "-me/x", "me/x y"]), st.text())


@pytest.mark.slow
@given(
    damage=RUN_DIR_DAMAGE,
    target=st.sampled_from(["run", "missing", "file", "empty"]),
    flags=st.lists(
        st.one_of(
            st.tuples(st.sampled_from(["--hub_model_id", "--hub-model-id"]), HUB_IDS),
            st.tuples(st.sampled_from(["--hub_token"]), st.sampled_from(["hf_" + "a" * 30, "", " ", "x"])),
            st.tuples(st.sampled_from(["--merged", "--hub_private_repo", "--nope"])),
        ),
        max_size=3,
    ),
)
@example(damage=None, target="run", flags=[("--nope",)]).via("found: an unknown flag printed argparse's usage block")
def test_push_command(finished_text_run, damage, target, flags):
    work, patch = scratch(), pytest.MonkeyPatch()
    try:
        patch.setattr("huggingface_hub.get_token", lambda: None)  # no login on the test machine either way
        run = damaged_run_copy(finished_text_run, work, damage)
        path = {"run": run, "missing": work / "nope", "file": run / "config.json", "empty": work / "empty"}[target]
        (work / "empty").mkdir()
        argv = ["push", str(path), *[f"{flag}={value[0]}" if value else flag for flag, *value in flags]]
        user = {work: snapshot(work)}
        outcome = call_entry_point(cli.main, argv)
        assert outcome.code == 2, outcome.stdout  # offline: a push cannot succeed
        assert_clean_outcome(outcome, user)
    finally:
        patch.undo()
        shutil.rmtree(work, ignore_errors=True)


PREDICT_FLAGS = {
    "batch_size": numbers(st.integers(1, 8), cap=10**4),
    "text_columns": st.sampled_from(["text", "t", "label", "", "text text"]),
    "id_column": st.sampled_from(["id", "text", "", "label", "nope"]),
}


@pytest.mark.slow
@given(
    damage=RUN_DIR_DAMAGE,
    table=text_tables(),
    extra=flag_lists(PREDICT_FLAGS, ("overwrite", "strict_images"), most=2),
    existing_output=st.booleans(),
)
@example(
    damage=("config", "hidden_size", _DELETE),
    table=(".csv", b"text,label\ngood film,pos\n"),
    extra=[],
    existing_output=False,
).via("found: a finished run whose config.json does not fit its weights -> RuntimeError")
def test_predict_command(finished_text_run, damage, table, extra, existing_output):
    work = scratch()
    try:
        run = damaged_run_copy(finished_text_run, work, damage)
        inputs, preds = work / "inputs", work / "preds"
        inputs.mkdir()
        (inputs / f"input{table[0]}").write_bytes(table[1])
        if existing_output:
            preds.mkdir()
            (preds / "p.csv").write_text("mine\n")
        user = {inputs: snapshot(inputs), run: snapshot(run)}
        argv = ["predict", str(run), "--input", str(inputs / f"input{table[0]}"), "--output", str(preds / "p.csv")]
        outcome = call_entry_point(cli.main, [*argv, *extra])
        if existing_output:
            if outcome.code != 0:
                assert (preds / "p.csv").read_text() == "mine\n"  # a failed or refused predict keeps the old file
            assert_clean_outcome(outcome, user)
        else:
            assert_clean_outcome(outcome, user, preds, ("p.csv",))
    finally:
        shutil.rmtree(work, ignore_errors=True)


LADDER_FLAGS = {
    "time_budget": st.one_of(
        st.sampled_from(["0.01s", "5m", "0", "-1m", "1e9h", "nan", "", "90 s", "1.5h"]), st.text()
    ),
    "seeds": numbers(st.integers(1, 2), cap=2),
    "tolerance": numbers(st.floats(0, 0.99)),
    "metric": choices(["accuracy", "macro_f1"]),
    "modality": choices(["auto", "text", "image"]),
    "max_steps": numbers(st.sampled_from([1, 2]), cap=2),
    "learning_rate": numbers(st.floats(1e-6, 1.0)),
}
CHEAP_RUNGS = st.lists(st.sampled_from(["probe_head", "head_only", "lora", "nope"]), min_size=1, max_size=2)


@pytest.mark.slow
@given(extra=flag_lists(LADDER_FLAGS, most=3), rungs=CHEAP_RUNGS)
def test_ladder_command(tiny_bert_dir, text_csv_dir, extra, rungs):
    work = scratch()
    try:
        out = work / "out"
        user = {Path(tiny_bert_dir): snapshot(Path(tiny_bert_dir)), text_csv_dir: snapshot(text_csv_dir)}
        argv = ["ladder", *tiny_args(tiny_bert_dir, text_csv_dir, out, "--max_steps", "1", "--time_budget", "5m"),
                "--rungs", *rungs, *extra]  # fmt: skip
        outcome = call_entry_point(cli.main, argv)
        assert_clean_outcome(outcome, user, out, ("ladder.json", "ladder.md"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


APP_FLAGS = st.lists(
    st.one_of(
        st.tuples(st.just("--port"), numbers(st.integers(1024, 65535))),
        st.tuples(st.just("--host"), st.sampled_from(["127.0.0.1", "localhost", "", "999.1.1.1", "::1", "x y"])),
        st.tuples(st.sampled_from(["--nope", "--merged"])),
    ),
    max_size=2,
)


@pytest.mark.slow
@given(damage=RUN_DIR_DAMAGE, flags=APP_FLAGS, texts=st.lists(CELL_TEXT, min_size=1, max_size=3))
@example(damage=("bytes", "README.md", ("overwrite", 0.0, b"\x80")), flags=[], texts=["good film"]).via(
    "found: a README.md that is not UTF-8 -> UnicodeDecodeError"
)
@example(damage=("bytes", "run_args.yaml", ("overwrite", 0.0, b"\x80")), flags=[], texts=["good film"]).via(
    "found: a run_args.yaml that is not UTF-8 -> UnicodeDecodeError (ftpeft predict too)"
)
@example(damage=("config", "hidden_size", _DELETE), flags=[], texts=["good film"]).via(
    "found: a finished run whose config.json does not fit its weights -> RuntimeError"
)
def test_app_command(finished_text_run, damage, flags, texts):
    """`ftpeft app` up to the launch of the page (which would serve until stopped), then what the page scores."""
    import gradio as gr

    from ftpeft.app.scoring import load_scorer
    from ftpeft.core.errors import FtpeftError

    launched, work, patch = [], scratch(), pytest.MonkeyPatch()
    try:
        patch.setattr(gr.Blocks, "launch", lambda page, **kwargs: launched.append(kwargs))
        run = damaged_run_copy(finished_text_run, work, damage)
        argv = ["app", str(run), *[f"{flag}={value[0]}" if value else flag for flag, *value in flags]]
        user = {work: snapshot(work)}
        outcome = call_entry_point(cli.main, argv)
        assert_clean_outcome(outcome, user)
        if outcome.code != 0:
            return
        assert launched, outcome.stderr
        scorer = load_scorer(run)
        for text in texts:
            try:
                probabilities = scorer.score_text([text])
            except FtpeftError:  # the page shows it as the error of this input
                continue
            assert set(probabilities) == {"neg", "pos"} and math.isclose(sum(probabilities.values()), 1, rel_tol=1e-5)
        assert snapshot(work) == user[work]
    finally:
        patch.undo()
        shutil.rmtree(work, ignore_errors=True)


# --- end to end: the found failures as real processes (what a user sees in the terminal) ---------------------------


@pytest.fixture(scope="module")
def broken_inputs(tiny_bert_dir, finished_text_run, tmp_path_factory) -> dict[str, Path]:
    """One input of each kind the fuzzer broke, built once: a model folder whose config.json lost hidden_size, a
    tokenizer_config.json with a non-string class, a finished run whose run_args.yaml is not UTF-8."""
    root = tmp_path_factory.mktemp("broken")
    config = root / "config_model"
    shutil.copytree(tiny_bert_dir, config)
    edit_json(config / "config.json", "hidden_size", _DELETE)
    tokenizer = root / "tokenizer_model"
    shutil.copytree(tiny_bert_dir, tokenizer)
    edit_json(tokenizer / "tokenizer_config.json", "tokenizer_class", False)
    run = damaged_run_copy(finished_text_run, root, ("bytes", "run_args.yaml", ("overwrite", 0.0, b"\x80")))
    return {"config": config, "tokenizer": tokenizer, "run": run, "root": root}


@pytest.mark.slow
def test_found_failures_end_to_end_in_real_processes(broken_inputs, text_csv_dir):
    """python recipes/bert_cls.py and python -m ftpeft.cli in fresh processes: exit 2, one error line, no traceback."""
    root = broken_inputs["root"]
    before = snapshot(root)
    calls = {
        "weights that do not fit config.json": [
            sys.executable, str(RECIPES / "bert_cls.py"),
            *tiny_args(broken_inputs["config"], text_csv_dir, root / "out1", "--max_steps", "1"),
        ],
        "a non-string tokenizer_class": [
            sys.executable, str(RECIPES / "bert_cls.py"),
            *tiny_args(broken_inputs["tokenizer"], text_csv_dir, root / "out2", "--max_steps", "1"),
        ],
        "a run_args.yaml that is not UTF-8": [
            sys.executable, "-m", "ftpeft.cli", "predict", str(broken_inputs["run"]),
            "--input", str(text_csv_dir / "test.csv"), "--output", str(root / "p.csv"),
        ],
        "an unknown flag of ftpeft push": [sys.executable, "-m", "ftpeft.cli", "push", str(broken_inputs["run"]), "--x"],
    }  # fmt: skip
    for case, argv in calls.items():
        result = run(argv)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and TRACEBACK not in result.stderr, (case, result.stderr[-3000:])
        assert lines and lines[-1].startswith("error: "), (case, result.stderr[-3000:])
    assert snapshot(root) == before
    assert not any((root / name).exists() for name in ("out1", "out2", "p.csv"))
