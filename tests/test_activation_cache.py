"""Frozen-prefix activation cache: exact for every architecture, same training, keyed, refused when inexact."""

import copy

import pytest
import torch
from helpers import (
    ARCHITECTURES,
    TEXT_RUN_FILES,
    assert_rank_zero_built_the_cache,
    launch_recipe_on_two_cpu_ranks,
    load_recipe,
    make_tokenizer,
    mean_test_loss,
    tiny_args,
    tiny_model,
)
from transformers import DataCollatorWithPadding

from ftpeft import FtpeftError, unfreeze_last
from ftpeft.cache.prefix import (
    BoundaryStore,
    CachedPrefixModel,
    CachedStatesCollator,
    boundary_states,
    cached_split,
    check_cacheable,
    frozen_fingerprint,
)
from ftpeft.core.freezing import keep_in_eval
from ftpeft.tuning.args import TuningArguments

TEXTS = ["good film was great", "bad plot and boring actor", "the movie", "really quite superb story and fine"]


def encoded(model_type):
    batch = make_tokenizer()(TEXTS, padding=True, return_tensors="pt")
    batch.pop("token_type_ids", None)
    return dict(batch)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
@pytest.mark.parametrize("k", [0, 1, 3])
def test_cached_forward_equals_full_forward(model_type, k):
    model = tiny_model(model_type).eval()
    if k == 0 and model_type == "deberta-v2":
        with pytest.raises(FtpeftError, match="not supported for deberta-v2"):
            check_cacheable(model, k)
        return
    check_cacheable(model, k)
    batch = encoded(model_type)
    expected = model(**batch).logits
    states = boundary_states(model, k, batch)
    wrapper = CachedPrefixModel(model, k).eval()
    got = wrapper(states, batch["attention_mask"]).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    restored = wrapper.restore()
    torch.testing.assert_close(restored(**batch).logits, expected, rtol=0, atol=0)


def sgd_losses(model, forward, steps=4):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    losses = []
    for step in range(steps):
        torch.manual_seed(step)  # same dropout masks in the trainable layers for both runs
        optimizer.zero_grad()
        loss = forward()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_training_from_the_cache_equals_training_with_a_dropout_free_frozen_part():
    torch.manual_seed(0)
    reference = tiny_model("bert")
    cached = copy.deepcopy(reference)
    batch, labels = encoded("bert"), torch.tensor([1, 0, 0, 1])
    for model in (reference, cached):
        unfreeze_last(model, 2)
        model.train()
    keep_in_eval([reference.bert.embeddings, *reference.bert.encoder.layer[:2]])
    expected = sgd_losses(reference, lambda: reference(**batch, labels=labels).loss)
    states = boundary_states(cached, 2, batch)
    wrapper = CachedPrefixModel(cached, 2).train()
    got = sgd_losses(cached, lambda: wrapper(states, batch["attention_mask"], labels=labels).loss)
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert len(set(got)) == len(got)  # the steps did change the model
    model = wrapper.restore().eval()
    torch.testing.assert_close(model(**batch).logits, reference.eval()(**batch).logits, rtol=1e-5, atol=1e-5)


def tokenized_dataset(texts=TEXTS):
    from datasets import Dataset

    tokenizer = make_tokenizer()
    rows = tokenizer(texts)
    return Dataset.from_dict({**rows, "labels": [i % 2 for i in range(len(texts))]})


@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-6), ("float16", 2e-3), ("bfloat16", 2e-2)])
def test_store_round_trip_and_reuse(tmp_path, dtype, tolerance):
    model = tiny_model("bert").eval()
    dataset, collator = tokenized_dataset(), DataCollatorWithPadding(make_tokenizer())
    model_hash = frozen_fingerprint(model, 2)
    index, store, reused = cached_split(model, 2, dataset, collator, tmp_path, dtype, 3, model_hash)
    assert not reused and len(store) == len(TEXTS) and index.column_names == ["labels", "cache_index", "cache_split"]
    batch = CachedStatesCollator(store)([index[i] for i in range(4)])
    full = boundary_states(model, 2, encoded("bert"))
    mask = batch["attention_mask"].bool()
    assert torch.equal(mask, encoded("bert")["attention_mask"].bool())
    torch.testing.assert_close(batch["boundary_states"][mask], full[mask], rtol=tolerance, atol=tolerance)
    _, _, reused_again = cached_split(model, 2, dataset, collator, tmp_path, dtype, 3, model_hash)
    assert reused_again


def test_stale_or_damaged_caches_are_never_reused(tmp_path):
    model = tiny_model("bert").eval()
    dataset, collator = tokenized_dataset(), DataCollatorWithPadding(make_tokenizer())
    _, store, _ = cached_split(model, 2, dataset, collator, tmp_path, "float16", 4, frozen_fingerprint(model, 2))
    # other data, other boundary, other frozen weights -> other keys
    _, _, reused = cached_split(model, 2, tokenized_dataset(TEXTS[:3]), collator, tmp_path, "float16", 4,
                                frozen_fingerprint(model, 2))  # fmt: skip
    assert not reused
    assert frozen_fingerprint(model, 1) != frozen_fingerprint(model, 2)
    changed = tiny_model("bert")
    frozen_weight = changed.bert.encoder.layer[0].output.dense.weight
    original = frozen_weight.detach().clone()
    with torch.no_grad():
        frozen_weight.add_(1e-3)
    assert frozen_fingerprint(changed, 2) != frozen_fingerprint(model, 2)
    with torch.no_grad():  # a trainable layer does not change the key
        frozen_weight.copy_(original)
        changed.bert.encoder.layer[3].output.dense.weight.add_(1.0)
    assert frozen_fingerprint(changed, 2) == frozen_fingerprint(model, 2)
    # a damaged file fails validation and is rebuilt
    states_file = store.directory / "states.npy"
    data = bytearray(states_file.read_bytes())
    data[-1] ^= 0xFF
    states_file.write_bytes(bytes(data))
    assert not BoundaryStore.is_valid(store.directory)
    _, _, reused = cached_split(model, 2, dataset, collator, tmp_path, "float16", 4, frozen_fingerprint(model, 2))
    assert not reused and BoundaryStore.is_valid(store.directory)


@pytest.mark.parametrize(
    "unfreeze_last,train_embeddings,use_peft,message",
    [
        ("all", False, False, "needs --unfreeze_last k"),
        ("2", True, False, "cannot be used with --train_embeddings"),
        ("2", False, True, "cannot be used with --use_peft"),
    ],
)
def test_inexact_setups_are_refused(unfreeze_last, train_embeddings, use_peft, message):
    with pytest.raises(FtpeftError, match=message):
        TuningArguments(
            unfreeze_last=unfreeze_last, cache_frozen=True, train_embeddings=train_embeddings, use_peft=use_peft
        )


def cached_recipe_args(tiny_bert_dir, text_csv_dir, out, cache_dir):
    return tiny_args(tiny_bert_dir, text_csv_dir, out, "--unfreeze-last", "2", "--cache_frozen",
                     "--activation_cache_dir", str(cache_dir))  # fmt: skip


def test_cached_training_keeps_head_lr_and_layer_decay(tmp_path):
    from transformers import TrainingArguments

    from ftpeft import FtpeftTrainer, build_param_groups

    model = tiny_model("bert")
    unfreeze_last(model, 2)
    groups = build_param_groups(model, 1e-4, head_lr=1e-2, layer_decay=0.5)
    expected = {id(p): g["lr"] for g in groups for p in g["params"]}
    third_layer_weight = model.bert.encoder.layer[2].output.dense.weight
    wrapper = CachedPrefixModel(model, 2)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    optimizer = FtpeftTrainer(model=wrapper, args=args, param_groups=groups).create_optimizer()
    got = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert got == expected
    assert {id(p) for p in wrapper.parameters() if p.requires_grad} == set(got)
    assert got[id(model.classifier.weight)] == 1e-2
    assert got[id(third_layer_weight)] == pytest.approx(1e-4 * 0.5**2)


@pytest.mark.parametrize("k", ["2", "0"])
def test_recipe_with_cache_saves_the_complete_model_and_reuses_the_cache(
    tiny_bert_dir, text_csv_dir, tmp_path, caplog, k
):
    from transformers import AutoModelForSequenceClassification

    bert_cls = load_recipe("bert_cls")
    out, cache = tmp_path / "run", tmp_path / "cache"
    bert_cls.main(cached_recipe_args(tiny_bert_dir, text_csv_dir, out, cache) + ["--unfreeze-last", k])
    assert {p.name for p in out.iterdir()} == TEXT_RUN_FILES
    assert len(list(cache.iterdir())) == 2  # train + validation
    saved = AutoModelForSequenceClassification.from_pretrained(out)
    original = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    same = {n for n, p in saved.named_parameters() if torch.equal(p, dict(original.named_parameters())[n])}
    frozen = ("bert.embeddings", *(f"bert.encoder.layer.{i}." for i in range(4 - int(k))))
    assert all(n.startswith(frozen) or (k == "0" and n.startswith("bert.pooler")) for n in same)
    assert any(n.startswith("bert.encoder.layer.0.") for n in same)  # the frozen bottom is saved too
    caplog.clear()
    bert_cls.main(
        cached_recipe_args(tiny_bert_dir, text_csv_dir, out, cache) + ["--unfreeze-last", k, "--overwrite_output_dir"]
    )
    assert "activation cache for train reused" in caplog.text


@pytest.mark.parametrize(
    "dtype, stores, embedded_rows", [("float32", 3, 64 + 16 + 16), ("float16", 2, 64 + 16 + (16 + 16))]
)
def test_a_float32_cache_scores_validation_and_test_from_the_cache_exactly(
    tiny_bert_dir, text_csv_dir, tmp_path, monkeypatch, dtype, stores, embedded_rows
):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.models.bert import modeling_bert

    embedded = []  # rows that went through the embeddings: the frozen prefix ran on them
    forward = modeling_bert.BertEmbeddings.forward
    monkeypatch.setattr(
        modeling_bert.BertEmbeddings, "forward",
        lambda self, input_ids=None, **kw: embedded.append(len(input_ids)) or forward(self, input_ids, **kw),
    )  # fmt: skip
    out, cache = tmp_path / "run", tmp_path / "cache"
    metrics = load_recipe("bert_cls").main(
        cached_recipe_args(tiny_bert_dir, text_csv_dir, out, cache) + ["--cache_dtype", dtype]
    )
    # float32: the prefix ran once per example (building train, validation and test); float16: validation and
    # test once more, through the complete model, for the final scores
    assert len(list(cache.iterdir())) == stores and sum(embedded) == embedded_rows
    saved = AutoModelForSequenceClassification.from_pretrained(out)
    expected = mean_test_loss(saved, AutoTokenizer.from_pretrained(out), text_csv_dir / "test.csv")
    assert metrics["test_loss"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_two_ranks_share_one_cache(tiny_bert_dir, text_csv_dir, tmp_path):
    args = cached_recipe_args(tiny_bert_dir, text_csv_dir, tmp_path / "ddp", tmp_path / "cache")
    assert_rank_zero_built_the_cache(launch_recipe_on_two_cpu_ranks("bert_cls", *args), tmp_path / "cache")
    assert (tmp_path / "ddp" / "metrics.json").is_file()
