"""Knowledge injection: tables, mentions, alignment, the model (add/concat/gate), freezing, LoRA, the recipe."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import (
    RECIPES,
    ROOT,
    TABLE_DIM,
    TABLE_KEYS,
    load_recipe,
    make_tiny_text_model,
    make_wordpiece_tokenizer,
    snapshot,
    subprocess_env,
    table_vectors,
    write_glove,
    write_knowledge_dataset,
    write_npy,
    write_safetensors,
)

from ftpeft.core.errors import FtpeftError
from ftpeft.knowledge.args import KnowledgeArguments
from ftpeft.knowledge.data import knowledge_batch
from ftpeft.knowledge.mentions import match_mentions
from ftpeft.knowledge.model import (
    KNOWLEDGE_TABLE,
    KnowledgeInjectionForSequenceClassification,
    build_knowledge_model,
    set_knowledge_trainable,
)
from ftpeft.knowledge.table import KnowledgeTable, load_knowledge_table, read_knowledge_file, vader_lexicon_path

RECIPE = RECIPES / "knowledge_cls.py"
knowledge_cls = load_recipe("knowledge_cls")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer BertModel (no head) with the WordPiece tokenizer over the table's words."""
    directory = tmp_path_factory.mktemp("tiny_kb_bert")
    return make_tiny_text_model(directory, "bert", num_layers=2, tokenizer=make_wordpiece_tokenizer(), head=False)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return load_knowledge_table([write_glove(tmp_path_factory.mktemp("kb") / "kb.txt")])


def _model(tiny_bert, table, mode="add", **settings):
    torch.manual_seed(0)
    return build_knowledge_model(
        str(tiny_bert), ["negative", "positive"], torch.from_numpy(table.vectors), inject_mode=mode, **settings
    )


def _batch(tiny_bert, texts, table):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    return knowledge_batch(tokenizer, texts, table), tokenizer


# --- tables ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("writer", [write_glove, write_npy, write_safetensors])
def test_formats_read_the_same_table(tmp_path, writer):
    suffix = {write_glove: ".txt", write_npy: ".npy", write_safetensors: ".safetensors"}[writer]
    keys, vectors = read_knowledge_file(writer(tmp_path / f"kb{suffix}"))
    assert keys == TABLE_KEYS
    np.testing.assert_allclose(vectors, table_vectors(), atol=1e-5)


def test_word2vec_header_and_vader_lexicon(tmp_path):
    keys, vectors = read_knowledge_file(write_glove(tmp_path / "w2v.vec", header=True))
    assert len(keys) == len(TABLE_KEYS) and vectors.shape == (len(TABLE_KEYS), TABLE_DIM)
    keys, vectors = read_knowledge_file(vader_lexicon_path())
    assert vectors.shape[1] == 12 and len(keys) > 7000 and len(set(keys)) == len(keys)
    good = vectors[keys.index("good")]
    assert good[0] == pytest.approx(1.9 / 4) and np.abs(vectors).max() <= 1.0


def test_several_sources_are_concatenated_over_the_union_of_keys(tmp_path):
    first = write_glove(tmp_path / "a.txt", keys=["good", "bad"], vectors=np.ones((2, 2), np.float32))
    second = write_glove(tmp_path / "b.txt", keys=["bad", "paris"], vectors=np.full((2, 3), 2, np.float32))
    merged = load_knowledge_table([first, second])
    assert merged.keys == ["good", "bad", "paris"] and merged.dim == 5
    np.testing.assert_array_equal(merged.vectors, [[1, 1, 0, 0, 0], [1, 1, 2, 2, 2], [0, 0, 2, 2, 2]])
    with pytest.raises(FtpeftError, match="--knowledge_dim 4 does not match"):
        load_knowledge_table([first, second], expected_dim=4)


@pytest.mark.parametrize(
    "content, message",
    [
        ("good 1 2 3\nbad 1 2\n", "line 2: key 'bad' has 2 values"),  # wrong dimension
        ("good 1 2\ngood 3 4\n", "key 'good' appears twice"),  # duplicated key
        ("good 1 2\n\t3 4\n", "empty \\(missing\\) key"),  # missing key
        ("good 1 nan\n", "NaN/inf"),
        ("good 1 x\n", "not 'key value value"),
    ],
)
def test_bad_tables_name_the_file(tmp_path, content, message):
    path = tmp_path / "kb.txt"
    path.write_text(content)
    with pytest.raises(FtpeftError, match=f"--knowledge_file {path}.*{message}"):
        read_knowledge_file(path)


def test_bad_table_files(tmp_path):
    np.save(tmp_path / "kb.npy", np.zeros((3, 2), np.float32))
    (tmp_path / "kb.txt").write_text("a\nb\n")
    with pytest.raises(FtpeftError, match="3 vectors but 2 keys"):
        read_knowledge_file(tmp_path / "kb.npy")
    (tmp_path / "kb.parquet").write_text("x")
    with pytest.raises(FtpeftError, match="unknown format '.parquet'"):
        read_knowledge_file(tmp_path / "kb.parquet")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(FtpeftError, match="broken.safetensors: cannot read it"):
        read_knowledge_file(tmp_path / "broken.safetensors")
    with pytest.raises(FtpeftError, match="no such file"):
        read_knowledge_file(tmp_path / "missing.txt")


# --- mentions and alignment ---------------------------------------------------------------------------------
def test_matching_is_case_insensitive_word_bounded_and_longest_first(table):
    text = "New York has GOOD goods, unbelievable! :)"
    found = [(text[s:e], table.keys[i - 2]) for s, e, i in match_mentions(text, table)]
    assert found == [("New York", "new york"), ("GOOD", "good"), ("unbelievable", "unbelievable"), (":)", ":)")]


def test_an_entity_gives_its_id_to_its_first_sub_token_only(tiny_bert, table):
    batch, tokenizer = _batch(tiny_bert, ["unbelievable film", "new york is good"], table)
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    assert tokens[:4] == ["[CLS]", "un", "##believ", "##able"]
    unbelievable, new_york, good = (table.id_of(k) for k in ("unbelievable", "new york", "good"))
    assert batch["knowledge_ids"][0].tolist() == [0, unbelievable, 0, 0, 0, 0]  # [CLS] un ##believ ##able film [SEP]
    assert batch["knowledge_ids"][1].tolist() == [0, new_york, 0, 0, good, 0]  # [CLS] new york is good [SEP]
    assert batch["knowledge_ids"].shape == batch["input_ids"].shape


def test_collator_pads_knowledge_with_zero_to_the_input_length(tiny_bert, table):
    batch, _ = _batch(tiny_bert, ["good", "the film was very very good"], table)
    assert batch["knowledge_ids"].shape == batch["input_ids"].shape
    padding = batch["attention_mask"] == 0
    assert padding.any() and (batch["knowledge_ids"][padding] == 0).all()


# --- the model -------------------------------------------------------------------------------------------------
def test_add_injects_exactly_zero_where_there_is_no_knowledge(tiny_bert, table):
    model = _model(tiny_bert, table, "add")
    torch.nn.init.normal_(model.knowledge_projection.weight)  # zero at init; make it non-trivial
    torch.nn.init.normal_(model.knowledge_projection.bias)
    batch, _ = _batch(tiny_bert, ["the film was good", "unbelievable movie"], table)
    injected = model.knowledge_injection(batch["knowledge_ids"])
    assert injected.shape == (*batch["input_ids"].shape, model.config.encoder.hidden_size)
    has_knowledge = batch["knowledge_ids"] != 0
    assert (injected[~has_knowledge] == 0).all() and (injected[has_knowledge].abs().sum(-1) > 0).all()
    assert model(**batch).logits.shape == (2, 2)


@pytest.mark.parametrize("mode", ["concat", "gate"])
def test_late_fusion_shapes_and_mention_mean(tiny_bert, table, mode):
    model = _model(tiny_bert, table, mode, num_example_ids=1, example_vector_dim=3)
    batch, _ = _batch(tiny_bert, ["good and bad film", "the movie"], table)
    batch["example_knowledge_ids"] = torch.tensor([[table.id_of("great")], [1]])
    batch["knowledge_vectors"] = torch.ones(2, 3)
    assert model.config.external_dim == TABLE_DIM * 2 + 3
    external = model.external_features(
        batch["knowledge_ids"], batch["example_knowledge_ids"], batch["knowledge_vectors"], 2
    )
    vectors = torch.from_numpy(table.vectors)
    good, bad, great = (table.keys.index(k) for k in ("good", "bad", "great"))
    torch.testing.assert_close(external[0, :TABLE_DIM], (vectors[good] + vectors[bad]) / 2)
    assert (external[1, : 2 * TABLE_DIM] == 0).all()  # no mention, unknown ID -> zero
    torch.testing.assert_close(external[0, TABLE_DIM : 2 * TABLE_DIM], vectors[great])
    assert model(**batch).logits.shape == (2, 2)


def _train_steps(model, batch, steps=3):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.tensor([1, 0])
    for _ in range(steps):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize(
    "mode, k, train_knowledge, unknown, expect_changed",
    [
        # k=0 trains the readout: the pooler is the head's input (ftpeft.unfreeze_last)
        ("add", 0, False, "zero", {"knowledge_projection", "classifier", "pooler"}),
        ("add", 1, False, "learned", {"knowledge_projection", "classifier", "layer.1", "pooler", "unknown_knowledge"}),
        ("concat", 0, True, "zero", {"fusion", "classifier", "pooler", KNOWLEDGE_TABLE}),
        ("gate", 1, False, "zero", {"fusion", "classifier", "layer.1", "pooler"}),
    ],
)
def test_training_changes_exactly_what_should_train(
    tiny_bert, table, mode, k, train_knowledge, unknown, expect_changed
):
    from ftpeft.core.freezing import unfreeze_last

    model = _model(tiny_bert, table, mode, unknown_entity=unknown)
    unfreeze_last(model, k)
    set_knowledge_trainable(model, train_knowledge)
    batch, _ = _batch(tiny_bert, ["good film", "bad movie"], table)
    batch["knowledge_ids"][0, 2] = 1  # an unknown entity on "film"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train_steps(model, batch)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    for name in changed:
        assert any(part in name for part in expect_changed), f"{name} changed but should be frozen"
    for part in expect_changed:
        assert any(part in name for name in changed), f"nothing under {part} trained"
    table_weight = getattr(model, KNOWLEDGE_TABLE).weight
    assert torch.equal(table_weight[:2], torch.zeros_like(table_weight[:2]))  # rows 'none' and 'unknown' stay zero
    if not train_knowledge:
        assert torch.equal(table_weight, before[f"{KNOWLEDGE_TABLE}.weight"])


@pytest.mark.parametrize("mode", ["add", "gate"])
def test_save_and_auto_load_give_identical_logits(tiny_bert, table, tmp_path, mode):
    from transformers import AutoModelForSequenceClassification

    model = _model(tiny_bert, table, mode, unknown_entity="learned").eval()
    torch.nn.init.normal_(model.classifier.weight)
    batch, _ = _batch(tiny_bert, ["good film", "unbelievable awful movie"], table)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, KnowledgeInjectionForSequenceClassification)
    assert not getattr(loaded, KNOWLEDGE_TABLE).weight.requires_grad  # frozen after loading too
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "ftpeft-knowledge" and config["encoder_config"]["model_type"] == "bert"
    assert config["inject_mode"] == mode and config["knowledge_dim"] == TABLE_DIM


@pytest.mark.slow  # a fresh interpreter; in-process loading is test_save_and_auto_load_give_identical_logits
def test_auto_classes_know_the_model_after_import_ftpeft(tiny_bert, table, tmp_path):
    _model(tiny_bert, table, "concat").save_pretrained(tmp_path)
    code = (
        "import ftpeft\nfrom transformers import AutoConfig, AutoModelForSequenceClassification as A\n"
        f"m = A.from_pretrained({str(tmp_path)!r})\nprint(type(m).__name__, AutoConfig.from_pretrained({str(tmp_path)!r}).inject_mode)"
    )
    result = subprocess.run(check=False, args=[sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["KnowledgeInjectionForSequenceClassification", "concat"]


def test_layer_map_sees_the_wrapped_encoder(tiny_bert, table):
    from ftpeft.core.freezing import layer_map

    layers = layer_map(_model(tiny_bert, table, "gate"))
    assert layers.source == "table:bert" and layers.num_layers == 2
    assert {n.split(".")[0] for n in layers.head} == {KNOWLEDGE_TABLE, "fusion", "classifier"}


def test_lora_saves_the_injection_modules_with_the_adapter(tiny_bert, table):
    from ftpeft.tuning.lora import apply_lora, build_lora_config

    model = _model(tiny_bert, table, "add")
    config = build_lora_config(model, 4, 8, 0.0, None, None, 1, [])
    assert {"knowledge_projection", "classifier", KNOWLEDGE_TABLE, "encoder.layer.1", "pooler"} <= set(
        config.modules_to_save
    )
    peft_model = apply_lora(model, config)
    set_knowledge_trainable(peft_model, False)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n and "layer.0." in n for n in trainable)
    assert any("knowledge_projection.modules_to_save" in n for n in trainable)
    assert not any(KNOWLEDGE_TABLE in n for n in trainable)
    batch, _ = _batch(tiny_bert, ["good film", "bad movie"], table)
    assert peft_model(**batch).logits.shape == (2, 2)


def test_unknown_architecture_is_refused(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(FtpeftError, match=r"--inject add: encoder type 'gpt2' is not in ftpeft\.ARCHITECTURES"):
        build_knowledge_model(str(tmp_path), ["a", "b"], torch.zeros(2, 3), inject_mode="add")


# --- the recipe ---------------------------------------------------------------------------------------------------
def _recipe_argv(tiny_bert, data, output_dir, *extra):
    return [
        "--model_name_or_path", str(tiny_bert), "--train_file", str(data), "--output_dir", str(output_dir),
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
        "--validation_split_percentage", "25", "--eval_strategy", "no", "--save_strategy", "no",
        "--disable_tqdm", "true", "--use_cpu", "true", *extra,
    ]  # fmt: skip


def test_recipe_add_with_entity_spans_counts_unknown_entities(tiny_bert, tmp_path):
    data = write_knowledge_dataset(tmp_path / "train.jsonl")
    kb = write_glove(tmp_path / "kb.txt")
    output = tmp_path / "run"
    metrics = knowledge_cls.main(
        _recipe_argv(tiny_bert, data, output, "--inject", "add", "--knowledge_file", str(kb), "--entity_column",
                     "entities", "--unfreeze_last", "0", "--unknown_entity", "learned")
    )  # fmt: skip
    unknown = metrics["knowledge_train_unknown"] + metrics["knowledge_validation_unknown"]
    assert unknown == 2  # 'paris' (not in the table) in both copies of its row
    written = {p.name for p in output.iterdir()}
    assert {"model.safetensors", "config.json", "knowledge_keys.txt", "metrics.json", "run_args.yaml",
            "freeze_report.json", "README.md", "tokenizer.json"} <= written  # fmt: skip
    card = (output / "README.md").read_text()
    assert "unknown entities" in card
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(snippet, namespace)  # the card's loading code runs as written  # noqa: S102
    assert sorted(score["label"] for score in namespace["scores"]) == ["negative", "positive"]  # every class, scored
    assert KnowledgeTable.from_keys_file(output / "knowledge_keys.txt").keys == TABLE_KEYS
    saved = json.loads((output / "metrics.json").read_text())
    assert {k: v for k, v in saved.items() if k.startswith("knowledge_")} == {
        k: v for k, v in metrics.items() if k.startswith("knowledge_")
    }
    assert saved["knowledge_train_examples"] + saved["knowledge_validation_examples"] == 18  # 2 x 9 rows
    data_report = json.loads((output / "data_report.json").read_text())["splits"]
    assert data_report["train"]["rows_read"] == 18 and data_report["train"]["duplicates"] == 9  # the second copies
    report = json.loads((output / "freeze_report.json").read_text())
    # exactly the projection (TABLE_DIM -> 32), the encoder's pooler (k=0 trains the readout: 32 -> 32), the
    # classifier (32 -> 2) and the learned unknown vector train
    assert report["trainable_params"] == (TABLE_DIM * 32 + 32) + (32 * 32 + 32) + (32 * 2 + 2) + TABLE_DIM
    assert report["groups"]["head"]["trainable"] < report["groups"]["head"]["total"]  # the table stayed frozen


def test_recipe_concat_with_feature_and_id_columns_and_lora(tiny_bert, tmp_path):
    data = write_knowledge_dataset(tmp_path / "train.jsonl")
    kb = write_npy(tmp_path / "kb.npy")
    output = tmp_path / "run"
    metrics = knowledge_cls.main(
        _recipe_argv(tiny_bert, data, output, "--inject", "concat", "--knowledge_file", str(kb), "--knowledge_column",
                     "features", "entity_id", "--use_peft", "--lora_r", "2", "--unfreeze_last", "0")
    )  # fmt: skip
    # rows j = 0, 3, 6 of each of the 2 copies have the ID 'not-in-table'; word matching finds only table keys
    assert metrics["knowledge_train_unknown"] + metrics["knowledge_validation_unknown"] == 6
    assert metrics["knowledge_train_examples"] + metrics["knowledge_validation_examples"] == 18
    config = json.loads((output / "merged" / "config.json").read_text())
    assert config["num_example_ids"] == 1 and config["example_vector_dim"] == 3 and not config["token_knowledge"]
    assert (output / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--knowledge_dim", "5"], "--knowledge_dim 5 does not match"),
        (["--knowledge_file", "{tmp}/nope.bin"], "unknown format '.bin'"),
        (["--entity_column", "spans"], "--entity_column 'spans' not found"),
        (["--inject", "concat", "--knowledge_column", "nan_features"], "--knowledge_column nan_features: row .* NaN"),
        (["--entity_column", "bad_spans"], "--entity_column bad_spans: row 0 span \\(0, 99"),
        (["--inject", "sideways"], "--inject"),
    ],
)
def test_recipe_bad_input_exits_2_naming_the_flag(tiny_bert, tmp_path, capsys, extra, message):
    from ftpeft.core.errors import run_cli

    data = tmp_path / "train.jsonl"
    rows = [json.loads(line) for line in write_knowledge_dataset(tmp_path / "base.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows):
        row["nan_features"] = [1.0, float("nan") if i == 3 else 0.0]
        row["bad_spans"] = [[0, 99, "good"]]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "nope.bin").write_text("x")
    if "--knowledge_file" not in extra:
        extra = [*extra, "--knowledge_file", str(write_glove(tmp_path / "kb.txt"))]
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(knowledge_cls.main)(_recipe_argv(tiny_bert, data, tmp_path / "run", *extra))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.startswith("error: ") and err.strip().count("\n") == 0
    assert snapshot(tmp_path) == before  # nothing the user had was changed


def test_shipped_configs_parse():  # --help of the script: test_bert_cls.py::test_help_of_every_recipe
    configs = sorted((ROOT / "recipes" / "configs" / "knowledge_cls").glob("*.yaml"))
    assert configs
    for path in configs:
        first = path.read_text().splitlines()[0]
        assert first.startswith("#") and "recipes/knowledge_cls.py" in first and path.name in first
        knowledge = knowledge_cls.parse(["--config", str(path)])[3]
        assert isinstance(knowledge, KnowledgeArguments)


@pytest.mark.slow
def test_two_rank_ddp_run_with_injection(tiny_bert, tmp_path):
    data = write_knowledge_dataset(tmp_path / "train.jsonl", repeat=4)
    kb = write_glove(tmp_path / "kb.txt")
    output = tmp_path / "run"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(RECIPE),
        *_recipe_argv(tiny_bert, data, output, "--inject", "add", "--knowledge_file", str(kb), "--unfreeze_last", "1",
                      "--unknown_entity", "learned", "--entity_column", "entities"),
    ]  # fmt: skip
    env = subprocess_env(CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        check=False, args=command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((output / "metrics.json").read_text())
    assert "test_accuracy" not in metrics and "eval_accuracy" in metrics
    # 4 x 9 rows, 25 % held out: both ranks' examples counted once, the sampler's padding duplicate dropped
    assert metrics["knowledge_train_examples"] + metrics["knowledge_validation_examples"] == 36
    assert "(eval split, 9 examples)" in (output / "classification_report.md").read_text()
    assert round(metrics["eval_accuracy"] * 9) == pytest.approx(metrics["eval_accuracy"] * 9)
    assert "2 process(es)" in (output / "README.md").read_text()  # the card records both ranks


def test_benchmark_table_reports_mean_sd_and_the_paired_gain_over_text_only(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import knowledge_injection

    rows = [
        {"mode": mode, "source": source, "train_size": 2000, "seed": seed, "val_accuracy": acc,
         "test_accuracy": acc, "test_macro_f1": acc - 0.1, "train_coverage": coverage, "train_runtime_s": 10.0,
         "load_average": 1.0}
        for mode, source, base, coverage in (("none", "-", 0.8, None), ("concat", "afinn", 0.9, 0.5))
        for seed, acc in zip((42, 43), (base - 0.01, base + 0.01))
    ]  # fmt: skip
    knowledge_injection.write_table(rows, {"entities": 3, "held_out_tweets": 10}, "cmd", tmp_path / "table.md")
    table = (tmp_path / "table.md").read_text()
    assert "| 2000 | text only | - | 2 | 0.800 ± 0.014 | 0.800 ± 0.014 | 0.700 ± 0.014 | – | – | 10 |" in table
    assert (
        "| 2000 | concat (late) | afinn | 2 | 0.900 ± 0.014 | 0.900 ± 0.014 | 0.800 ± 0.014 | 10.0 ± 0.0 | 50% |"
        in table
    )
    assert "add (token level)" not in table and "3 entities from 10 held-out tweets" in table


def test_benchmark_entity_table_uses_only_tweets_no_run_can_draw(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import knowledge_injection
    import pandas as pd

    import ftpeft.text.demo

    # rows 0-2 are drawable (1 test + 2 training at the largest size); @a is negative there, positive past them
    texts = ["@a bad", "@a awful", "@a worse", "@a fine", "@a good", "#b ok", "#b ok too", "@a great", "#b nice"]
    labels = ["negative"] * 3 + ["positive"] * 6
    monkeypatch.setattr(
        ftpeft.text.demo, "demo_tweet_frame", lambda classes: pd.DataFrame({"text": texts, "label": labels})
    )
    monkeypatch.setattr(knowledge_injection, "TEST_SAMPLES", 1)
    monkeypatch.setattr(knowledge_injection, "drawn_tweets", lambda size: 2)
    summary = knowledge_injection.write_entity_table(tmp_path / "entities.txt")
    lines = dict(line.split("\t") for line in (tmp_path / "entities.txt").read_text().splitlines())
    assert summary == {"held_out_tweets": 6, "entities": 2, "first_held_out_row": 3}
    share, log_count = map(float, lines["@a"].split())
    assert share == pytest.approx((3 + 1) / (3 + 2), abs=1e-4)  # only the 3 held-out @a tweets, all positive
    assert log_count == pytest.approx(1.0) and set(lines) == {"@a", "#b"}


@pytest.mark.slow
def test_knowledge_carries_a_signal_the_text_lacks_to_entities_never_trained_on(tiny_bert, tmp_path):
    """The decisive synthetic check: the label is the sign of an entity's external vector, the entity names are
    out of the vocabulary ([UNK] to the encoder), and test entities never occur in training. Text alone cannot
    beat chance; injected knowledge generalises to the unseen entities."""
    import csv
    import random

    rng = random.Random(0)
    sign = {f"ent{i}": rng.choice((-1.0, 1.0)) for i in range(240)}
    lines = [f"{name} {value} {rng.gauss(0, 1):.3f} {rng.gauss(0, 1):.3f}" for name, value in sign.items()]
    (tmp_path / "kb.txt").write_text("\n".join(lines) + "\n")
    names = list(sign)
    for split, chosen in (("train", names[:160]), ("validation", names[160:200]), ("test", names[200:])):
        with (tmp_path / f"{split}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows([f"good {name} movie", "pos" if sign[name] > 0 else "neg"] for name in chosen)
    accuracy = {}
    for inject in ("none", "concat"):
        files = ["--knowledge_file", str(tmp_path / "kb.txt")] if inject != "none" else []
        splits = ["--validation_file", str(tmp_path / "validation.csv"), "--test_file", str(tmp_path / "test.csv")]
        argv = _recipe_argv(tiny_bert, tmp_path / "train.csv", tmp_path / inject, "--inject", inject, *files, *splits)
        # later flags win: 60 steps of 16, a fast head, the encoder frozen (only the readout and fusion learn)
        argv += [
            "--max_steps",
            "60",
            "--per_device_train_batch_size",
            "16",
            "--head_lr",
            "1e-2",
            "--unfreeze_last",
            "0",
        ]
        metrics = knowledge_cls.main(argv)
        accuracy[inject] = metrics["test_accuracy"]
    assert accuracy["concat"] >= 0.9 and accuracy["none"] <= 0.7, accuracy


def test_an_auto_run_stops_on_validation_and_records_where(tiny_bert, tmp_path):
    """knowledge_cls under --num_train_epochs auto (its default): evaluations at the auto cadence, the best kept."""
    data = write_knowledge_dataset(tmp_path / "train.jsonl")
    kb = write_glove(tmp_path / "kb.txt")
    argv = _recipe_argv(tiny_bert, data, tmp_path / "run", "--inject", "concat", "--knowledge_file", str(kb),
                        "--entity_column", "entities", "--early_stopping_patience", "1", "--auto_max_epochs", "3")  # fmt: skip
    for flag in ("--max_steps", "--eval_strategy", "--save_strategy"):
        at = argv.index(flag)
        del argv[at : at + 2]
    metrics = knowledge_cls.main([*argv, "--num_train_epochs", "auto"])
    record = json.loads((tmp_path / "run" / "resolved_settings.json").read_text())["stopping"]["used"]
    assert 1 <= record["best_step"] <= record["stopped_step"] <= record["plan"]["cap_steps"]
    assert metrics["eval_accuracy"] == pytest.approx(record["best_metric"])
