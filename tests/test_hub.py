"""Pushing to the Hub (HfApi mocked with autospec): what is pushed, where, the card, failures, the token."""

import json
from unittest import mock

import pytest
import yaml
from helpers import load_recipe, snapshot, tiny_args
from huggingface_hub import HfApi
from huggingface_hub.utils import filter_repo_objects

from ftpeft import cli
from ftpeft.core.errors import run_cli

bert_cls = load_recipe("bert_cls")
TOKEN = "hf_" + "Secret" * 6


@pytest.fixture(scope="module")
def finished_lora_run(tiny_bert_dir, text_csv_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("hub") / "run"
    bert_cls.main(
        tiny_args(tiny_bert_dir, text_csv_dir, out, "--use_peft", "--lora_r", "2", "--save_strategy", "steps",
                  "--save_steps", "1", "--merge_adapter")
    )  # fmt: skip
    return out


class FakeHub:
    """Records the files an upload_folder call would send."""

    def __init__(self, fail=False):
        self.fail, self.uploaded, self.calls = fail, None, []

    def patch(self):
        patcher = mock.patch("huggingface_hub.HfApi", autospec=True)
        api_class = patcher.start()
        api = api_class.return_value
        api.create_repo.side_effect = lambda repo_id, **kw: self.calls.append(("create_repo", repo_id, kw))
        api.upload_folder.side_effect = self.upload
        api.whoami.return_value = {"name": "me"}
        return patcher, api_class

    def upload(self, *, repo_id, folder_path, ignore_patterns=None, **kw):
        if self.fail:
            raise ConnectionError(f"503 Service Unavailable while sending with token {TOKEN}")
        from pathlib import Path

        files = [str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file()]
        self.uploaded = set(filter_repo_objects(files, ignore_patterns=ignore_patterns))
        self.calls.append(("upload_folder", repo_id, kw))


def push(argv, fake):
    patcher, api_class = fake.patch()
    try:
        return run_cli(cli.main)(argv), api_class
    finally:
        patcher.stop()


def test_push_sends_adapter_card_and_config_but_no_checkpoints(finished_lora_run):
    fake = FakeHub()
    code, api_class = push(
        [
            "push",
            str(finished_lora_run),
            "--hub_model_id",
            "me/minilm-sent",
            "--hub_private_repo",
            "--hub_token",
            TOKEN,
        ],
        fake,
    )
    assert code == 0
    api_class.assert_called_once_with(token=TOKEN)
    assert fake.calls[0] == ("create_repo", "me/minilm-sent", {"private": True, "exist_ok": True})
    assert fake.uploaded == {
        "README.md", "adapter_config.json", "adapter_model.safetensors", "classification_report.md",
        "confusion_matrix.png", "data_report.json", "freeze_report.json", "label_names.json", "learning_curve.png", "metrics.json", "resolved_settings.json", "run_args.yaml", "target.json", "tokenizer.json",
        "tokenizer_config.json", "training_args.bin",
    }  # fmt: skip
    assert any(p.name.startswith("checkpoint-") for p in finished_lora_run.iterdir())  # present, not pushed


def test_push_merged_sends_the_plain_model(finished_lora_run):
    fake = FakeHub()
    code, _ = push(["push", str(finished_lora_run), "--hub_model_id", "me/m", "--merged", "--hub_token", TOKEN], fake)
    assert code == 0
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= fake.uploaded
    assert "adapter_config.json" not in fake.uploaded


def test_card_header_metrics_and_snippet(finished_lora_run):
    card = (finished_lora_run / "README.md").read_text()
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["library_name"] == "peft" and header["pipeline_tag"] == "text-classification"
    assert "ftpeft" in header["tags"] and {"accuracy", "macro_f1"} <= set(header["metrics"])
    metrics = json.loads((finished_lora_run / "metrics.json").read_text())
    for key in ("eval_accuracy", "test_accuracy", "test_macro_f1"):
        assert f"| {key} | {metrics[key]:.4f} |" in card
    assert "AutoPeftModelForSequenceClassification.from_pretrained(" in card
    assert "Trainable parameters:" in card and "Command: `" in card


def test_failed_push_keeps_the_run_and_prints_a_retry_hint(finished_lora_run, capsys):
    before = snapshot(finished_lora_run)
    with pytest.raises(SystemExit) as exit_info:
        push(["push", str(finished_lora_run), "--hub_model_id", "me/x", "--hub_token", TOKEN], FakeHub(fail=True))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Retry with: ftpeft push" in err and "me/x" in err and "503" in err
    assert TOKEN not in err
    assert snapshot(finished_lora_run) == before


def test_recipe_push_failure_after_training_exits_nonzero_with_run_intact(
    tiny_bert_dir, text_csv_dir, tmp_path, capsys
):
    out = tmp_path / "run"
    fake = FakeHub(fail=True)
    patcher, _ = fake.patch()
    try:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(bert_cls.main)(
                tiny_args(
                    tiny_bert_dir, text_csv_dir, out, "--push_to_hub", "--hub_model_id", "me/y", "--hub_token", TOKEN
                )
            )
    finally:
        patcher.stop()
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert f"ftpeft push {out} --hub_model_id me/y" in captured.err
    assert {"model.safetensors", "metrics.json", "README.md"} <= {p.name for p in out.iterdir()}
    for path in out.rglob("*"):  # the token is nowhere on disk or in the logs
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in captured.out + captured.err


def test_push_to_hub_without_repo_or_login_fails_before_training(tiny_bert_dir, text_csv_dir, tmp_path, monkeypatch):
    from ftpeft.core.errors import FtpeftError

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    out = tmp_path / "run"
    with pytest.raises(FtpeftError, match="--push_to_hub needs --hub_model_id"):
        bert_cls.main(tiny_args(tiny_bert_dir, text_csv_dir, out, "--push_to_hub"))
    assert not out.exists()


def test_push_of_an_unfinished_run_is_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(cli.main)(["push", str(tmp_path), "--hub_model_id", "me/z", "--hub_token", TOKEN])
    assert exit_info.value.code == 2
    assert "not a finished ftpeft run (missing README.md, metrics.json)" in capsys.readouterr().err


def test_hfapi_mock_matches_the_real_signatures():
    for method in ("create_repo", "upload_folder", "whoami"):
        assert hasattr(HfApi, method)
