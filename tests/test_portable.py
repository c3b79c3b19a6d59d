"""Every output loads without ftpeft: a Python process in which ``import ftpeft`` fails (an import hook, cwd outside
the repo, no PYTHONPATH) runs each card's own loading snippet -- stock, LoRA adapter, merged/, mean pooling, knowledge
injection (text, and a row of columns), label sets, numbers -- and a Trainer checkpoint, and gets the scores
`ftpeft predict` gives on the same rows, long rows included (max abs difference <= 1e-5)."""

import ast
import inspect
import json
import re
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from helpers import (
    KB_TEXTS,
    entity_spans,
    load_recipe,
    make_label_set_files,
    make_regression_files,
    make_text_files,
    make_tiny_text_model,
    make_wordpiece_tokenizer,
    scores_without_ftpeft,
    tiny_args,
    write_glove,
    write_knowledge_dataset,
)

import ftpeft
from ftpeft.cli import main as cli_main
from ftpeft.core.card import text_loading_snippet
from ftpeft.core.environment import PACKAGES, environment, environment_line
from ftpeft.core.model_code import ship_model_code
from ftpeft.hub_code import SHIPPED_MODULES, knowledge_injection, mean_pooling
from ftpeft.knowledge.job import loading_snippet

bert_cls = load_recipe("bert_cls")
knowledge_cls = load_recipe("knowledge_cls")
TOLERANCE = 1e-5
LONG = 12  # a long row repeats its text this often: far past every run's --max_seq_length auto

LOAD_AND_SCORE = """
import torch

def ordered(model, rows):
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return [[{p["label"]: p["score"] for p in row}[name] for name in names] for row in rows]

results = {}
for case in json.load(open(sys.argv[1])):
    namespace = {}
    exec(case["snippet"], namespace)  # the card's loading code, as a user copies it
    if "classifier" in namespace:
        classifier = namespace["classifier"]
        results[case["name"]] = ordered(classifier.model, classifier(case["rows"], truncation=True, top_k=None))
        if case.get("batched"):  # batches of 4: the pipeline pads the knowledge inputs with the text
            rows = classifier(case["rows"], truncation=True, top_k=None, batch_size=4)
            results[case["name"] + "/batched"] = ordered(classifier.model, rows)
        if case.get("untruncated"):  # what a loader that ignores the run's length would give
            rows = classifier(case["rows"], top_k=None)
            results[case["name"] + "/untruncated"] = ordered(classifier.model, rows)
    else:  # a LoRA adapter: model + tokenizer
        model, tokenizer = namespace["model"].eval(), namespace["tokenizer"]
        with torch.no_grad():
            batch = tokenizer(case["rows"], padding=True, truncation=True, return_tensors="pt")
            results[case["name"]] = model(**batch).logits.softmax(-1).tolist()
print(json.dumps(results))
"""


def card_snippet(folder) -> str:
    card = (folder / "README.md").read_text()
    return card.split("## Load it\n\n```python\n", 1)[1].split("```", 1)[0]


def checkpoint_snippet(folder, task: str | None) -> str:
    """The stock loader on a Trainer checkpoint (no card there): the code saved in it must be enough."""
    task_arg = f'"{task}", ' if task else ""
    return f"from transformers import pipeline\nclassifier = pipeline({task_arg}model={str(folder)!r}, trust_remote_code=True)"


def with_long_rows(rows: list[dict]) -> list[dict]:
    """``rows`` and each of the first three again, its text said LONG times (its knowledge spans kept)."""
    return rows + [{**row, "text": " ".join([row["text"]] * LONG)} for row in rows[:3]]


def model_inputs(name: str, rows: list[dict]) -> list:
    """What the stock loader takes: texts, or for a knowledge model the rows (its pipeline reads the columns)."""
    return rows if name.startswith("knowledge") else [row["text"] for row in rows]


def predict(run_dir, rows: list[dict], tmp_path, name: str) -> pd.DataFrame:
    inputs, output = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.csv"
    inputs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert cli_main(["predict", str(run_dir), "--input", str(inputs), "--output", str(output)]) in (0, None)
    return pd.read_csv(output)


# --- the shipped files -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [mean_pooling, knowledge_injection], ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_a_shipped_module_imports_only_torch_and_transformers(module):
    tree = ast.parse(inspect.getsource(module))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import in {module.__name__}"  # remote code cannot follow it
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
    assert imported - set(sys.stdlib_module_names) == {"torch", "transformers"}
    assert SHIPPED_MODULES[module.MODEL_TYPE] == module.__name__.rsplit(".", 1)[-1]


def test_ftpeft_uses_the_shipped_classes_and_their_helpers_stay_identical():
    assert ftpeft.MeanPoolingForSequenceClassification is mean_pooling.MeanPoolingForSequenceClassification
    assert ftpeft.KnowledgeInjectionConfig is knowledge_injection.KnowledgeInjectionConfig
    for helper in ("encoder_config_from_dict", "classification_output"):  # each file carries its own copy
        assert inspect.getsource(getattr(mean_pooling, helper)) == inspect.getsource(
            getattr(knowledge_injection, helper)
        )


def test_every_loading_snippet_truncates_where_the_run_did():
    snippets = [
        text_loading_snippet("out", adapter, ["neg", "pos"], remote_code, problem_type)
        for adapter in (False, True)
        for remote_code in (False, True)
        for problem_type in ("single_label_classification", "multi_label_classification", "regression")
    ]
    layouts = [
        SimpleNamespace(id_columns=ids, vector_columns=vectors)
        for ids in ([], ["entity_id"])
        for vectors in ({}, {"features": 3})
    ]
    snippets += [loading_snippet("out", layout, entity) for layout in layouts for entity in (None, "entities")]
    for snippet in snippets:
        assert "truncation=True" in snippet and "import ftpeft" not in snippet, snippet


def test_the_environment_names_every_package_and_the_checkout():
    versions = environment()
    assert {"python", *PACKAGES, "ftpeft"} <= set(versions) and versions["ftpeft"] == ftpeft.__version__
    assert re.fullmatch(r"[0-9a-f]{40}", versions["ftpeft_git_commit"])  # the tests run from a git checkout
    line = environment_line(versions)
    assert line.startswith(f"Python {versions['python']}, torch {versions['torch']}, transformers ")
    assert f"ftpeft {ftpeft.__version__} (git {versions['ftpeft_git_commit'][:12]}" in line


# --- every output, loaded without ftpeft ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, tiny_bert_dir):
    """Every kind of output, trained 2 steps on tiny models: name -> (the folder a user loads, the rows to score)."""
    root = tmp_path_factory.mktemp("portable")
    for folder in ("text", "sets", "numbers"):
        (root / folder).mkdir()
    text_data = make_text_files(root / "text")
    sets, numbers = make_label_set_files(root / "sets"), make_regression_files(root / "numbers")
    texts = with_long_rows([{"text": t} for t in pd.read_csv(text_data / "test.csv")["text"][:6]])
    runs = {}

    def bert(name, data, *flags):
        out = root / name
        bert_cls.main(tiny_args(tiny_bert_dir, data, out, "--head_lr", "1e-2", *flags))
        return out

    runs["stock"] = (bert("stock", text_data, "--unfreeze-last", "2"), texts)
    lora = bert("lora", text_data, "--use_peft", "--lora_r", "4", "--merge_adapter")
    adapter = root / "adapter"  # the adapter alone: `ftpeft predict` then scores the adapter, not merged/
    shutil.copytree(lora, adapter, ignore=shutil.ignore_patterns("merged"))
    runs["adapter"], runs["merged"] = (adapter, texts), (lora / "merged", texts)
    checkpointed = ("--save_strategy", "steps", "--save_steps", "2")
    runs["mean"] = (bert("mean", text_data, "--unfreeze-last", "0", "--pooling", "mean", *checkpointed), texts)
    label_sets = ("--label_column", "tags", "--label_separator", ",", "--unfreeze-last", "2")
    set_rows = with_long_rows([{"text": t} for t in pd.read_csv(sets / "test.csv")["text"][:6]])
    runs["multi_label"] = (bert("multi_label", sets, *label_sets), set_rows)
    number_rows = with_long_rows([{"text": t} for t in pd.read_csv(numbers / "test.csv")["text"][:6]])
    regression = ("--label_column", "score", "--unfreeze-last", "0", "--pooling", "mean")
    runs["regression"] = (bert("regression", numbers, *regression), number_rows)

    encoder = make_tiny_text_model(root / "kb_bert", num_layers=2, tokenizer=make_wordpiece_tokenizer(), head=False)
    kb_data, table = write_knowledge_dataset(root / "kb.jsonl"), write_glove(root / "kb.txt")

    def knowledge(name, *flags):
        out = root / name
        knowledge_cls.main([
            "--model_name_or_path", encoder, "--train_file", str(kb_data), "--output_dir", str(out),
            "--validation_split_percentage", "25", "--max_steps", "2", "--per_device_train_batch_size", "4",
            "--eval_strategy", "no", "--knowledge_file", str(table), *checkpointed, *flags,
        ])  # fmt: skip
        return out

    kb_rows = [{"text": text} for text, _ in KB_TEXTS] + [{"text": "new york is a city and paris"}]
    # a large head LR: the injection (zero at the start) moves the scores well past the tolerance in 2 steps
    add = ("--inject", "add", "--unfreeze-last", "2", "--head_lr", "0.1")
    runs["knowledge"] = (knowledge("knowledge", *add), with_long_rows(kb_rows))
    column_rows = [
        {**row, "entities": entity_spans(row["text"]), "entity_id": key, "features": [float(i), 0.5, -1.0]}
        for i, (row, key) in enumerate(zip(kb_rows, ["good", "not-in-table", "new york", None, "acme corp"] * 2))
    ]
    columns = ("--inject", "concat", "--entity_column", "entities", "--knowledge_column", "entity_id", "features")
    runs["knowledge_columns"] = (knowledge("knowledge_columns", *columns), with_long_rows(column_rows))
    return runs


@pytest.mark.slow  # seven tiny runs and a fresh interpreter: ~25 s on 2 cores
def test_every_output_loads_without_ftpeft_and_scores_as_ftpeft_predict(outputs, tmp_path):
    cases, expected = [], {}
    for name, (folder, rows) in outputs.items():
        frame = predict(folder, rows, tmp_path, name)
        names = [c for c in frame.columns if c not in ("id", "label", "labels")]
        expected[name] = frame[names].to_numpy()
        cases.append({"name": name, "snippet": card_snippet(folder), "rows": model_inputs(name, rows)})
    cases[0]["untruncated"] = True  # stock
    for case in cases:
        if case["name"].startswith("knowledge"):
            case["batched"] = True
            expected[case["name"] + "/batched"] = expected[case["name"]]
    # a Trainer checkpoint, as saved at step 2: the final model's weights, so the final model's scores
    for name, task, code in (
        ("mean", "text-classification", "mean_pooling"),
        ("knowledge", None, "knowledge_injection"),
    ):
        checkpoint, rows = outputs[name][0] / "checkpoint-2", outputs[name][1]
        assert (checkpoint / f"{code}.py").is_file()
        snippet = checkpoint_snippet(checkpoint, task)
        cases.append({"name": f"{name}/checkpoint", "snippet": snippet, "rows": model_inputs(name, rows)})
        expected[f"{name}/checkpoint"] = expected[name]
    # without its keys the knowledge model scores differently: the knowledge ids the pipeline found are what matched
    no_keys = tmp_path / "no_keys.txt"
    no_keys.write_text("")
    folder, rows = outputs["knowledge"]
    snippet = (
        f"from transformers import pipeline\nclassifier = pipeline(model={str(folder)!r}, trust_remote_code=True, "
    )
    cases.append({"name": "knowledge/no_keys", "snippet": f"{snippet}knowledge_keys={str(no_keys)!r})", "rows": rows})
    scores = scores_without_ftpeft(LOAD_AND_SCORE, cases, tmp_path)
    assert set(scores) == set(expected) | {"stock/untruncated", "knowledge/no_keys"}
    for name, want in expected.items():
        got = np.asarray(scores[name])
        assert got.shape == want.shape, name
        assert np.abs(got - want).max() <= TOLERANCE, (name, np.abs(got - want).max())
    # the long rows are where truncation shows: a loader that ignored the run's length would disagree
    untruncated = np.asarray(scores["stock/untruncated"])
    assert np.abs(untruncated - expected["stock"]).max() > TOLERANCE
    assert np.abs(np.asarray(scores["knowledge/no_keys"]) - expected["knowledge"]).max() > TOLERANCE


@pytest.mark.slow  # the runs of the test above
def test_a_run_saved_without_code_gets_it_before_a_push(outputs, tmp_path):
    """`ftpeft push` uploads the code (push_run calls ship_model_code): a folder saved before ftpeft shipped it gets
    the file and auto_map first."""
    old = tmp_path / "old"
    shutil.copytree(outputs["mean"][0], old, ignore=shutil.ignore_patterns("checkpoint-*", "mean_pooling.py"))
    config = json.loads((old / "config.json").read_text())
    config.pop("auto_map")
    (old / "config.json").write_text(json.dumps(config))
    assert ship_model_code(old) == ["mean_pooling.py", "config.json"]
    assert json.loads((old / "config.json").read_text())["auto_map"] == config_auto_map("mean_pooling")
    assert ship_model_code(old) == []  # nothing missing any more
    assert ship_model_code(outputs["stock"][0]) == []  # a stock model has no code to ship


def config_auto_map(module: str) -> dict:
    classes = {"mean_pooling": "MeanPooling", "knowledge_injection": "KnowledgeInjection"}[module]
    return {
        "AutoConfig": f"{module}.{classes}Config",
        "AutoModelForSequenceClassification": f"{module}.{classes}ForSequenceClassification",
    }
