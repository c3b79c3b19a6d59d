"""`ftpeft export --format onnx` and `ftpeft predict --backend onnx`: each exportable kind of run gives the torch
backend's CSV to 1e-4 through its export, int8 included (looser), and what cannot be exported is refused in one line.

One table of runs (tiny models, 2 training steps): a stock classifier (one class per row), a merged LoRA run (label
sets: sigmoid + thresholds), the mean-pooling readout (numbers: raw outputs) and a timm model.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import (
    TIMM_ARGS,
    call_entry_point,
    load_recipe,
    make_label_set_files,
    make_regression_files,
    make_text_files,
    tiny_args,
    write_class_folders,
)

from ftpeft import cli

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

bert_cls = load_recipe("bert_cls")
image_cls = load_recipe("image_cls")

ATOL = 1e-4
LARGE_LRS = ["--learning_rate", "0.01", "--head_lr", "0.3", "--lora_lr", "0.05"]  # rows' outputs differ by >> ATOL
LABEL_SET_FLAGS = ["--label_column", "tags", "--label_separator", ","]
# case -> (data maker, recipe flags); 8 steps at LRs that leave the outputs different between rows
TEXT_CASES = {
    "stock": (make_text_files, ["--unfreeze-last", "2", *LARGE_LRS]),
    "lora_merged": (
        make_label_set_files,
        ["--use_peft", "--lora_r", "4", "--merge_adapter", *LABEL_SET_FLAGS, *LARGE_LRS],
    ),
    "mean_pooling": (
        make_regression_files,
        ["--unfreeze-last", "0", "--pooling", "mean", "--label_column", "score", "--learning_rate", "3e-3"],
    ),
}
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json"}
EXPORT_FILES = {"model.onnx", "onnx_export.json", "label_names.json", "target.json"}


def cli_outcome(*argv):
    return call_entry_point(cli.main, [str(a) for a in argv])


def predict_frame(run_dir, data, output, *flags) -> pd.DataFrame:
    outcome = cli_outcome("predict", run_dir, "--input", data, "--output", output, "--batch_size", "5", *flags)
    assert outcome.code == 0, outcome.stderr[-3000:]
    return pd.read_csv(output, dtype={"id": str}, keep_default_na=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert_dir):
    """case -> (run dir, what to predict), each trained once on first use."""
    root, built = tmp_path_factory.mktemp("export_runs"), {}

    def case(name):
        if name in built:
            return built[name]
        out, data = root / name, root / f"{name}_data"
        data.mkdir()
        if name == "timm":
            write_class_folders(data / "train", per_class=4)
            write_class_folders(data / "test", per_class=2)
            argv = ["--image_dir", data, *TIMM_ARGS, "--output_dir", out, "--max_steps", "2",
                    "--per_device_train_batch_size", "4", "--save_strategy", "no", "--unfreeze-last", "1"]  # fmt: skip
            image_cls.main([str(a) for a in argv])
            built[name] = out, data / "test"
        else:
            make_data, flags = TEXT_CASES[name]
            bert_cls.main(tiny_args(tiny_bert_dir, make_data(data), out, "--max_steps", "8", *flags))
            built[name] = out, data / "test.csv"
        return built[name]

    return case


@pytest.mark.parametrize("name", [*TEXT_CASES, "timm"])
def test_the_onnx_export_predicts_what_torch_predicts(runs, name, tmp_path):
    run_dir, data = runs(name)
    outcome = cli_outcome("export", run_dir, "--format", "onnx")
    assert outcome.code == 0, outcome.stderr[-3000:]
    assert "exported" in outcome.stdout
    export = run_dir / "onnx"
    info = json.loads((export / "onnx_export.json").read_text())
    target = json.loads((export / "target.json").read_text())
    expected_files = EXPORT_FILES | (TOKENIZER_FILES if name != "timm" else set())
    expected_files |= {"thresholds.json"} if name == "lora_merged" else set()
    assert {p.name for p in export.iterdir()} == expected_files
    assert info["check"]["max_abs_logit_difference"] <= ATOL and info["quantize"] == "none"

    if name != "timm":  # texts of 1-5 words: batches are padded (the tiny data's own rows all have one length)
        frame = pd.read_csv(data)
        frame["text"] = [" ".join(text.split()[: 1 + i % 5]) for i, text in enumerate(frame["text"])]
        data = tmp_path / "ragged.csv"
        frame.to_csv(data, index=False)
    torch_csv = predict_frame(run_dir, data, tmp_path / "torch.csv")
    onnx_csv = predict_frame(run_dir, data, tmp_path / "onnx.csv", "--backend", "onnx")
    assert list(onnx_csv.columns) == list(torch_csv.columns)
    assert list(onnx_csv["id"]) == list(torch_csv["id"])
    numbers = target["names"]
    np.testing.assert_allclose(onnx_csv[numbers].to_numpy(), torch_csv[numbers].to_numpy(), rtol=0, atol=ATOL)
    assert np.ptp(torch_csv[numbers].to_numpy(), axis=0).max() > 5 * ATOL  # a row mix-up could not pass
    label_column = {"single_label_classification": "label", "multi_label_classification": "labels"}
    if target["problem_type"] in label_column:  # numbers have none
        label_column = label_column[target["problem_type"]]
        assert list(onnx_csv[label_column]) == list(torch_csv[label_column])
    expected_problem = {"lora_merged": "multi_label_classification", "mean_pooling": "regression"}
    assert target["problem_type"] == expected_problem.get(name, "single_label_classification")


def test_an_int8_export_and_a_copied_export_folder(runs, tmp_path):
    """--quantize int8 to --output: smaller, close to fp32; an export folder copied alone predicts as in its run."""
    run_dir, data = runs("stock")
    fp32 = run_dir / "onnx"
    if not fp32.is_dir():
        assert cli_outcome("export", run_dir).code == 0
    int8 = tmp_path / "int8"
    outcome = cli_outcome("export", run_dir, "--quantize", "int8", "--output", int8)
    assert outcome.code == 0, outcome.stderr[-3000:]
    info = json.loads((int8 / "onnx_export.json").read_text())
    assert info["quantize"] == "int8" and info["source"]["quantized_from"] == str(fp32 / "model.onnx")  # no 2nd trace
    assert info["fp32_convolutions"] == 0 and "convolutions" not in outcome.stdout
    assert (int8 / "model.onnx").stat().st_size < 0.5 * (fp32 / "model.onnx").stat().st_size

    fp32_csv = predict_frame(run_dir, data, tmp_path / "fp32.csv", "--backend", "onnx")
    int8_csv = predict_frame(int8, data, tmp_path / "int8.csv", "--backend", "onnx")
    assert list(int8_csv.columns) == list(fp32_csv.columns)
    np.testing.assert_allclose(int8_csv[["neg", "pos"]].sum(axis=1), 1.0, atol=1e-6)
    assert np.abs(int8_csv[["neg", "pos"]].to_numpy() - fp32_csv[["neg", "pos"]].to_numpy()).max() < 0.05

    alone = shutil.copytree(fp32, tmp_path / "copied_alone")
    copied_csv = predict_frame(alone, data, tmp_path / "copied.csv", "--backend", "onnx")
    pd.testing.assert_frame_equal(copied_csv, fp32_csv)
    again = cli_outcome("export", run_dir, "--quantize", "int8", "--output", int8)
    assert again.code == 2 and "--overwrite" in again.stderr


def _knowledge_run(path):
    from ftpeft.knowledge.model import MODEL_TYPE

    (path / "config.json").write_text(json.dumps({"model_type": MODEL_TYPE}))
    (path / "knowledge_keys.txt").write_text("good\n")


def _stale_export(path, runs):
    run_dir, _ = runs("stock")
    copy = shutil.copytree(run_dir, path, dirs_exist_ok=True)
    if not (copy / "onnx").is_dir():
        assert cli_outcome("export", copy).code == 0
    info_file = copy / "onnx" / "onnx_export.json"
    info = json.loads(info_file.read_text())
    info["source"] = {**info["source"], "run_dir": str(copy), "model_dir": str(copy)}
    info["source"]["weights_sha256"] = {"model.safetensors": "0" * 64}  # as if the run was retrained since
    info_file.write_text(json.dumps(info))


# what -> (make the folder, the command after its path, the start of the one-line error)
REFUSALS = {
    "a knowledge model": (_knowledge_run, ["export"], "a knowledge-injection model needs ftpeft"),
    "a train_head head": (
        lambda p: [(p / "head_config.json").write_text("{}"), (p / "head.safetensors").write_bytes(b"")],
        ["export"],
        "a train_head head reruns its backbones",
    ),
    "an adapter without merged/": (
        lambda p: (p / "adapter_config.json").write_text("{}"),
        ["export"],
        "a LoRA adapter without merged/",
    ),
    "predict with no export": (lambda p: None, ["predict", "--backend", "onnx"], "no ONNX export"),
    "an export of weights since changed": (None, ["predict", "--backend", "onnx"], "exported from weights that"),
}


@pytest.mark.parametrize("what", list(REFUSALS))
def test_what_cannot_be_exported_is_refused_in_one_line(what, runs, tmp_path):
    make, command, message = REFUSALS[what]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if make is None:
        _stale_export(run_dir, runs)
    else:
        make(run_dir)
    argv = [command[0], run_dir, *command[1:]]
    if command[0] == "predict":
        data = tmp_path / "in.csv"
        data.write_text("text\ngood film\n")
        argv += ["--input", data, "--output", tmp_path / "out.csv"]
    outcome = cli_outcome(*argv)
    assert outcome.code == 2, outcome.stderr[-3000:]
    lines = outcome.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], outcome.stderr[-2000:]
    assert not (run_dir / "onnx").exists() or what == "an export of weights since changed"


def test_an_int8_export_of_a_conv_net_says_its_convolutions_stay_fp32(runs, tmp_path):
    run_dir, data = runs("timm")
    outcome = cli_outcome("export", run_dir, "--quantize", "int8", "--output", tmp_path / "int8")
    assert outcome.code == 0, outcome.stderr[-3000:]
    convolutions = json.loads((tmp_path / "int8" / "onnx_export.json").read_text())["fp32_convolutions"]
    assert convolutions > 0
    assert f"its {convolutions} convolutions stay fp32" in outcome.stdout
    int8_csv = predict_frame(tmp_path / "int8", data, tmp_path / "int8.csv", "--backend", "onnx")
    torch_csv = predict_frame(run_dir, data, tmp_path / "torch.csv")
    assert list(int8_csv["id"]) == list(torch_csv["id"])
    classes = list(torch_csv.columns[2:])
    assert np.abs(int8_csv[classes].to_numpy() - torch_csv[classes].to_numpy()).max() < 0.05


def test_a_calibrated_int8_export_of_a_conv_net_quantises_its_convolutions(runs, tmp_path):
    run_dir, data = runs("timm")
    train = data.parent / "train"
    flags = ["--quantize", "int8", "--calibration_data", train, "--output", tmp_path / "static"]
    outcome = cli_outcome("export", run_dir, *flags)
    assert outcome.code == 0, outcome.stderr[-3000:]
    info = json.loads((tmp_path / "static" / "onnx_export.json").read_text())
    images = len(list(train.rglob("*.jpg")))
    assert info["fp32_convolutions"] == 0 and info["calibration"] == {"folder": str(train.resolve()), "images": images}
    assert f"calibrated on {images} images" in outcome.stdout and "stay fp32" not in outcome.stdout
    assert {p.name for p in (tmp_path / "static").iterdir()} == EXPORT_FILES
    difference = info["check"]["max_abs_logit_difference"]  # read on real images: quantisation shows (noise did not)
    assert difference > ATOL and f"by at most {difference:.2g}" in outcome.stdout
    static_csv = predict_frame(tmp_path / "static", data, tmp_path / "static.csv", "--backend", "onnx")
    torch_csv = predict_frame(run_dir, data, tmp_path / "torch.csv")
    assert list(static_csv["id"]) == list(torch_csv["id"])
    classes = list(torch_csv.columns[2:])
    assert np.abs(static_csv[classes].to_numpy() - torch_csv[classes].to_numpy()).max() < 0.1


@pytest.mark.parametrize(
    "case, flags, message",
    [
        ("stock", ["--quantize", "int8", "--calibration_data", "{train}"], "a text model's int8 is dynamic"),
        ("timm", ["--calibration_data", "{train}"], "--calibration_data calibrates --quantize int8"),
        ("timm", ["--quantize", "int8", "--calibration_data", "{missing}"], "not a folder"),
        ("timm", ["--quantize", "int8", "--calibration_data", "{empty}"], "no readable images"),
    ],
)
def test_calibration_data_is_refused_in_one_line_where_it_cannot_apply(runs, tmp_path, case, flags, message):
    run_dir = runs(case)[0]
    (tmp_path / "empty").mkdir()
    places = {"train": runs("timm")[1].parent / "train", "missing": tmp_path / "missing", "empty": tmp_path / "empty"}
    argv = [flag.format(**places) for flag in flags]
    outcome = cli_outcome("export", run_dir, *argv, "--output", tmp_path / "out")
    assert outcome.code == 2 and message in outcome.stderr and len(outcome.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
