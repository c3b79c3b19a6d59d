"""recipes/bert_cls.py end to end on a tiny BERT and tiny data (and once on the real packaged MiniLM)."""

import json

import pytest
from recipe_helpers import ROOT, accelerate_bin, load_recipe, python_recipe, run, snapshot

bert_cls = load_recipe("bert_cls")

EXPECTED_FILES = {
    "README.md",
    "classification_report.md",
    "config.json",
    "confusion_matrix.png",
    "freeze_report.json",
    "metrics.json",
    "model.safetensors",
    "run_args.yaml",
    "tokenizer.json",
    "tokenizer_config.json",
    "training_args.bin",
}


def tiny_args(model_dir, data_dir, output_dir, *extra):
    return [
        "--model_name_or_path",
        str(model_dir),
        "--train_file",
        str(data_dir / "train.csv"),
        "--validation_file",
        str(data_dir / "validation.csv"),
        "--test_file",
        str(data_dir / "test.csv"),
        "--output_dir",
        str(output_dir),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "8",
        "--save_strategy",
        "no",
        "--eval_strategy",
        "no",
        "--logging_steps",
        "1",
        *extra,
    ]


def test_main_writes_exactly_the_expected_files_and_loads_in_pipeline(tiny_bert_dir, text_csv_dir, tmp_path):
    from transformers import pipeline

    out = tmp_path / "run"
    metrics = bert_cls.main(tiny_args(tiny_bert_dir, text_csv_dir, out, "--unfreeze-last", "1"))
    assert {p.name for p in out.iterdir()} == EXPECTED_FILES
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert {"eval_accuracy", "eval_macro_f1", "test_accuracy", "test_f1_pos", "train_runtime"} <= set(saved)
    freeze = json.loads((out / "freeze_report.json").read_text())
    assert freeze["trainable_layers"] == [4] and freeze["num_layers"] == 4
    prediction = pipeline("text-classification", model=str(out))("good film")[0]
    assert prediction["label"] in {"neg", "pos"}
    card = (out / "README.md").read_text()
    assert "unfreeze_last 1" in card and "test_accuracy" in card


def test_non_empty_output_dir_is_refused_and_left_untouched(tiny_bert_dir, text_csv_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("results of last week")
    before = snapshot(out)
    result = python_recipe("bert_cls", *tiny_args(tiny_bert_dir, text_csv_dir, out))
    assert result.returncode == 2
    assert "--output_dir" in result.stderr and "--overwrite_output_dir" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(out) == before


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


@pytest.mark.parametrize("recipe", sorted(p.stem for p in (ROOT / "recipes").glob("*.py")))
def test_help_of_every_recipe(recipe):
    result = python_recipe(recipe, "--help", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:") and ("--output_dir" in result.stdout or "--feature_dir" in result.stdout)


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
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["test_samples_per_second"] > 0


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
    metrics = json.loads((out / "metrics.json").read_text())
    # 2 steps x 2 ranks x 8 examples: both ranks fed the optimizer
    assert metrics["train_samples_per_second"] * metrics["train_runtime"] == pytest.approx(32, rel=0.05)
    # a near-uniform tiny model starts at ln 2 = 0.69; averaging tokens across ranks would report ~1.39
    assert metrics["train_loss"] < 1.0
    assert {p.name for p in out.iterdir()} == EXPECTED_FILES


@pytest.mark.slow
def test_multi_node_template_as_two_machines_on_loopback(tiny_bert_dir, text_csv_dir, tmp_path):
    import socket
    import subprocess

    from recipe_helpers import subprocess_env

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
