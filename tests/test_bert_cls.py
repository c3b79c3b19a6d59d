"""recipes/bert_cls.py end to end on a tiny BERT and tiny data (and once on the real packaged MiniLM)."""

import json
import math

import pytest
from helpers import (
    ROOT,
    TEXT_RUN_FILES,
    accelerate_bin,
    load_recipe,
    make_long_text_files,
    python_recipe,
    run,
    run_recipe_scripts,
    snapshot,
    subprocess_env,
    tiny_args,
)

bert_cls = load_recipe("bert_cls")


def test_main_writes_exactly_the_expected_files_and_loads_in_pipeline(tiny_bert_dir, text_csv_dir, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    out = tmp_path / "run"
    metrics = bert_cls.main(tiny_args(tiny_bert_dir, text_csv_dir, out, "--unfreeze-last", "1"))
    assert {p.name for p in out.iterdir()} == TEXT_RUN_FILES
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert {"eval_accuracy", "eval_macro_f1", "test_accuracy", "test_f1_pos", "train_runtime"} <= set(saved)
    freeze = json.loads((out / "freeze_report.json").read_text())
    assert freeze["trainable_layers"] == [4] and freeze["num_layers"] == 4
    prediction = pipeline("text-classification", model=str(out))("good film")[0]
    model, tokenizer = AutoModelForSequenceClassification.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        logits = model(**tokenizer(["good film"], return_tensors="pt")).logits[0]
    assert prediction["label"] == model.config.id2label[int(logits.argmax())]  # the saved labels, not LABEL_0/1
    assert prediction["score"] == pytest.approx(float(logits.softmax(-1).max()), rel=1e-5)
    card = (out / "README.md").read_text()
    assert "unfreeze_last 1" in card and "test_accuracy" in card


def test_the_tiny_model_learns_the_sentiment_signal(tiny_bert_dir, text_csv_dir, tmp_path):
    """64 full fine-tuning steps learn the one-word signal (1.0 for seeds 1, 7 and 42 when written); the labels
    alternate, so the majority-class rate of the validation and test splits is exactly 0.5."""
    import pandas as pd
    from transformers import pipeline

    out = tmp_path / "run"
    metrics = bert_cls.main(
        tiny_args(tiny_bert_dir, text_csv_dir, out, "--unfreeze-last", "all", "--max_steps", "64",
                  "--learning_rate", "3e-3", "--head_lr", "3e-3", "--layer_decay", "1")
    )  # fmt: skip
    assert metrics["eval_accuracy"] >= 0.875 and metrics["test_accuracy"] >= 0.875
    assert metrics["test_loss"] < math.log(2)  # below the loss of a model that knows nothing
    # the saved model, through the stock pipeline, scores the test file exactly as the run reported
    test = pd.read_csv(text_csv_dir / "test.csv")
    predicted = [p["label"] for p in pipeline("text-classification", model=str(out))(list(test["text"]))]
    assert sum(p == y for p, y in zip(predicted, test["label"])) == round(metrics["test_accuracy"] * len(test))


RECIPE_NAMES = sorted(p.stem for p in (ROOT / "recipes").glob("*.py"))
HELP_FLAGS = {  # flags each known recipe's --help must list, beyond --output_dir / --feature_dir
    "bert_cls": ["--output_dir", "--unfreeze_last", "--use_peft", "--cache_frozen"],
    "extract_features": ["--feature_dir", "--image_dir", "--layer"],
    "image_cls": ["--output_dir", "--labels_csv", "--image_dir", "--unfreeze_last"],
    "knowledge_cls": ["--output_dir", "--inject", "--knowledge_file"],
    "train_head": ["--features_dir", "--head", "--output_dir"],
}


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(False, id="in-process"),
        pytest.param(True, id="fresh-interpreter", marks=pytest.mark.slow),  # an interpreter start-up: ~10 s
    ],
)
def script_runs(request, tiny_bert_dir, text_csv_dir, tmp_path_factory):
    """Every recipe's --help, and bert_cls into a non-empty --output_dir, run as scripts (``__main__``)."""
    out = tmp_path_factory.mktemp("script_runs") / "run"
    out.mkdir()
    (out / "precious.txt").write_text("results of last week")
    before = snapshot(out)
    invocations = {name: [name, "--help"] for name in RECIPE_NAMES}
    invocations["non_empty_output_dir"] = ["bert_cls", *tiny_args(tiny_bert_dir, text_csv_dir, out)]
    return run_recipe_scripts(invocations, fresh_interpreter=request.param), out, before


def test_help_of_every_recipe(script_runs):
    results, _, _ = script_runs
    assert set(HELP_FLAGS) <= set(RECIPE_NAMES)
    for name in RECIPE_NAMES:
        result = results[name]
        assert result.returncode == 0, (name, result.stderr[-2000:])
        assert result.stdout.startswith(f"usage: {name}.py"), name
        assert "--output_dir" in result.stdout or "--feature_dir" in result.stdout, name
        assert all(flag in result.stdout for flag in HELP_FLAGS.get(name, [])), name


def test_non_empty_output_dir_is_refused_and_left_untouched(script_runs):
    results, out, before = script_runs
    result = results["non_empty_output_dir"]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "--output_dir" in result.stderr and "--overwrite_output_dir" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(out) == before


@pytest.mark.slow  # one interpreter start each; the same messages are checked in-process in test_bad_input.py
@pytest.mark.parametrize(
    "extra,culprit",
    [
        (["--unfreeze_last", "9"], "--unfreeze_last 9 is larger than the model's 4 layers"),
        (["--label_column", "stars"], "--label_column 'stars' not found"),
        (["--model_name_or_path", "./no/such/model"], "--model_name_or_path ./no/such/model: no such directory"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(tiny_bert_dir, text_csv_dir, tmp_path, extra, culprit):
    result = python_recipe("bert_cls", *tiny_args(tiny_bert_dir, text_csv_dir, tmp_path / "run"), *extra)
    assert result.returncode == 2, result.stderr[-2000:]
    assert culprit in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("config", sorted((ROOT / "recipes/configs/bert_cls").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_parse_against_the_recipe(config):
    parsed = bert_cls.parse(["--config", str(config)])
    assert parsed.resolved  # every key known, every value typed by argparse
    first_line = config.read_text().splitlines()[0]
    assert first_line.startswith("#") and "recipes/bert_cls.py" in config.read_text().split("\n\n")[0]


def test_packaged_minilm_is_the_offline_default(tmp_path):
    out = tmp_path / "run"
    metrics = bert_cls.main(
        [
            "--output_dir",
            str(out),
            "--max_steps",
            "3",
            "--demo_train_samples",
            "96",
            "--demo_test_samples",
            "32",
            "--per_device_train_batch_size",
            "16",
            "--save_strategy",
            "no",
            "--eval_strategy",
            "no",
            "--unfreeze-last",
            "2",
        ]
    )
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"} and config["num_hidden_layers"] == 6
    # 3 steps learn little more than the class prior (21 of the 32 fixed test tweets are negative: 0.656 when
    # written, loss 0.629), but all 32 are scored with the right label mapping: swapped labels would give 11/32
    # and a loss above the untrained head's ln 2
    assert round(metrics["test_accuracy"] * 32) == pytest.approx(metrics["test_accuracy"] * 32)
    assert metrics["test_accuracy"] > 0.5 and metrics["test_loss"] < math.log(2)
    assert metrics["test_samples_per_second"] > 0


@pytest.mark.slow
def test_two_cpu_ranks_with_accelerate(tiny_bert_dir, text_csv_dir, tmp_path):
    out = tmp_path / "ddp"
    result = run(
        [
            accelerate_bin(),
            "launch",
            "--config_file",
            str(ROOT / "accelerate_configs/cpu_ddp.yaml"),
            str(ROOT / "recipes/bert_cls.py"),
            *tiny_args(tiny_bert_dir, text_csv_dir, out, "--unfreeze-last", "2"),
        ],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "process 0 of 2" in result.stderr and "process 1 of 2" in result.stderr
    assert "engine: DDP wraps the model (accelerate: MULTI_CPU, 2 process(es))" in result.stderr
    assert "rank 1: model wrapped by DistributedDataParallel; holds" in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    # 2 steps x 2 ranks x 8 examples: both ranks fed the optimizer
    assert metrics["train_samples_per_second"] * metrics["train_runtime"] == pytest.approx(32, rel=0.05)
    # a near-uniform tiny model starts at ln 2 = 0.69; averaging tokens across ranks would report ~1.39
    assert metrics["train_loss"] < 1.0
    assert {p.name for p in out.iterdir()} == TEXT_RUN_FILES


@pytest.mark.slow
def test_multi_node_template_as_two_machines_on_loopback(tiny_bert_dir, text_csv_dir, tmp_path):
    import socket
    import subprocess

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "multinode"
    machines = [
        subprocess.Popen(
            [
                accelerate_bin(),
                "launch",
                "--config_file",
                str(ROOT / "accelerate_configs/multi_node.yaml"),
                "--num_machines",
                "2",
                "--num_processes",
                "2",
                "--machine_rank",
                str(rank),
                "--main_process_ip",
                "127.0.0.1",
                "--main_process_port",
                str(port),
                "--mixed_precision",
                "no",
                str(ROOT / "recipes/bert_cls.py"),
                *tiny_args(tiny_bert_dir, text_csv_dir, out, "--unfreeze-last", "1"),
            ],
            cwd=ROOT,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [m.communicate(timeout=300) for m in machines]
    for machine, (_, err) in zip(machines, outputs):
        assert machine.returncode == 0, err[-3000:]
    logs = outputs[0][1] + outputs[1][1]
    assert "process 0 of 2" in logs and "process 1 of 2" in logs
    assert (out / "metrics.json").is_file() and (out / "model.safetensors").is_file()


# --- --max_seq_length auto (the default) ---------------------------------------------------------------------------

RESOLVE_CASES = [
    # (what, --max_seq_length, training token lengths, the model's positions, used, in the why)
    ("p99 rounded up to 8", "auto", list(range(1, 101)), 512, 104, "99% of the 100 training texts have at most 99"),
    ("one long text in 100 is cut", "auto", [5] * 99 + [300], 512, 8, "have at most 5 tokens"),
    ("a multiple of 8 stays", "auto", [16] * 10, 512, 16, "have at most 16 tokens"),
    ("clipped to the model", "auto", [600] * 10, 512, 512, "(600), clipped to the 512 positions m takes (100.0%"),
    ("clipped below a multiple of 8", "auto", [100] * 10, 78, 78, "(104), clipped to the 78 positions m takes"),
    ("a model without a limit", "auto", [600] * 10, None, 600, "have at most 600 tokens"),
    ("a number as given", "32", [600] * 10, 512, 32, "--max_seq_length as given"),
    ("a number from the library", 512, [5], 512, 512, "--max_seq_length as given"),
]  # fmt: skip


@pytest.mark.parametrize(
    "given,lengths,limit,used,why", [c[1:] for c in RESOLVE_CASES], ids=[c[0] for c in RESOLVE_CASES]
)
def test_auto_is_the_p99_of_the_training_lengths_rounded_up_to_8_and_clipped(given, lengths, limit, used, why):
    from ftpeft.text.modeling import resolve_max_seq_length

    chosen, reason = resolve_max_seq_length(given, lengths, limit, "m")
    assert chosen == used and why in reason, reason


BAD_LENGTHS = [
    ("600", 512, "--max_seq_length 600 is longer than the 512 positions m takes"),  # a number is never clipped
    ("0", None, "--max_seq_length must be >= 1, got 0."),
    ("abc", None, "--max_seq_length must be auto or a number >= 1, got 'abc'."),
    ("1.5", None, "--max_seq_length must be auto or a number >= 1, got '1.5'."),
]


@pytest.mark.parametrize("given,limit,message", BAD_LENGTHS)
def test_a_bad_or_too_long_number_is_refused(given, limit, message):
    from ftpeft.core.errors import FtpeftError
    from ftpeft.text.modeling import resolve_max_seq_length

    with pytest.raises(FtpeftError) as error:
        resolve_max_seq_length(given, [5], limit, "m")
    assert str(error.value).startswith(message)


AUTO_RUNS = [
    # (what, model, words per text (None: make_text_files' 5), flags, length used, in the why)
    ("default auto on short texts", "bert", None, [], 8, "auto: 99% of the 64 training texts have at most 7 tokens"),
    ("a number as given", "bert", None, ["--max_seq_length", "12"], 12, "--max_seq_length as given"),
    ("default clipped to the model, not refused", "roberta", 100, [], 78, "(104), clipped to the 78 positions"),
]  # fmt: skip


@pytest.mark.parametrize("model,words,flags,used,why", [c[1:] for c in AUTO_RUNS], ids=[c[0] for c in AUTO_RUNS])
def test_the_run_records_the_length_saves_it_with_the_tokenizer_and_predict_uses_it(
    tiny_bert_dir, tiny_roberta_dir, text_csv_dir, tmp_path, caplog, model, words, flags, used, why
):
    import pandas as pd
    from transformers import AutoTokenizer, pipeline

    from ftpeft import cli
    from ftpeft.predict.runs import detect_run
    from ftpeft.predict.text import max_seq_length

    model_dir = tiny_bert_dir if model == "bert" else tiny_roberta_dir
    data = text_csv_dir if words is None else make_long_text_files(tmp_path, repeat=words // 5)
    out = tmp_path / "run"
    with caplog.at_level("INFO", logger="ftpeft"):
        bert_cls.main(tiny_args(model_dir, data, out, *flags))
    recorded = json.loads((out / "resolved_settings.json").read_text())["max_seq_length"]
    assert recorded["given"] == (flags[1] if flags else "auto") and recorded["used"] == used and why in recorded["why"]
    assert f"setting max_seq_length: {recorded['given']!r} -> {used}" in caplog.text  # logged with its reason
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == used
    assert json.loads((out / "data_report.json").read_text())["max_seq_length"] == used
    long_text = " ".join(["good film"] * 200)
    assert len(AutoTokenizer.from_pretrained(out)(long_text, truncation=True)["input_ids"]) == used
    assert pipeline("text-classification", model=str(out), truncation=True)(long_text)[0]["label"] in ("neg", "pos")
    assert max_seq_length(detect_run(out)) == used
    predictions = tmp_path / "preds.csv"  # the long texts run through the model: cut where the run cut them
    assert cli.main(["predict", str(out), "--input", str(data / "test.csv"), "--output", str(predictions)]) == 0
    assert len(pd.read_csv(predictions)) == len(pd.read_csv(data / "test.csv"))


def test_a_number_longer_than_the_model_is_refused_before_any_work(tiny_roberta_dir, tmp_path, capsys):
    from ftpeft.core.errors import run_cli

    data = make_long_text_files(tmp_path, repeat=20)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(bert_cls.main)(tiny_args(tiny_roberta_dir, data, out, "--max_seq_length", "100"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.strip().count("\n") == 0, err
    assert f"error: --max_seq_length 100 is longer than the 78 positions {tiny_roberta_dir} takes" in err
    assert not out.exists()
