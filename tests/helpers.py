"""The one shared helpers module of the tests: paths and recipe loading, subprocess runs, tiny models and tokenizers
built from configs (no Hub), and the data makers of each capability (text, images, knowledge).

Plain functions and constants only: pytest fixtures live in conftest.py, and test modules import from here, never
from each other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import io
import json
import os
import random
import runpy
import shlex
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


# --- recipes, subprocesses, snapshots -----------------------------------------------------------------------------


def load_recipe(name: str):
    """Import recipes/<name>.py as a module (recipes are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def subprocess_env(**extra) -> dict:
    """The environment of a child process: one torch thread, offline, this checkout first on the import path."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run(args: list[str], timeout: int = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        check=False, args=args, cwd=ROOT, env=subprocess_env(**env), capture_output=True, text=True, timeout=timeout
    )


def python_recipe(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return run([sys.executable, str(RECIPES / f"{name}.py"), *args], timeout=timeout)


def run_scripts_here(argvs: dict[str, list[str]]) -> dict[str, list]:
    """Run each argv (a script's path, then its arguments) as ``python <argv>`` would, in this interpreter:
    the script's ``__main__`` with that ``sys.argv``. Returns key -> [exit code, stdout, stderr]: SystemExit's
    code, or 1 and the traceback on stderr for any other exception."""
    results, saved_argv = {}, sys.argv
    try:
        for key, argv in argvs.items():
            sys.argv, stdout, stderr, code = list(argv), io.StringIO(), io.StringIO(), 0
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                try:
                    runpy.run_path(argv[0], run_name="__main__")
                except SystemExit as exit:
                    code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
                except Exception:  # noqa: BLE001  (what the interpreter does with an uncaught one: exit 1)
                    traceback.print_exc()
                    code = 1
            results[key] = [code, stdout.getvalue(), stderr.getvalue()]
    finally:
        sys.argv = saved_argv
    return results


def run_recipe_scripts(
    invocations: dict[str, list[str]], fresh_interpreter: bool, timeout: int = 300
) -> dict[str, subprocess.CompletedProcess]:
    """Run recipes as scripts: ``invocations`` maps a key to [recipe name, *args]; each result has the exit code,
    stdout and stderr that ``python recipes/<name>.py *args`` would give.

    ``fresh_interpreter`` runs them all in ONE new interpreter (one start-up of several seconds: the imports of torch
    and transformers); otherwise they run in this one."""
    argvs = {key: [str(RECIPES / f"{name}.py"), *args] for key, (name, *args) in invocations.items()}
    if fresh_interpreter:
        code = "import helpers, json, sys; print(json.dumps(helpers.run_scripts_here(json.loads(sys.argv[1]))))"
        pythonpath = os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")])
        result = run([sys.executable, "-c", code, json.dumps(argvs)], timeout=timeout, PYTHONPATH=pythonpath)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs = json.loads(result.stdout.strip().splitlines()[-1])
    else:
        outputs = run_scripts_here(argvs)
    return {key: subprocess.CompletedProcess(argvs[key], *outputs[key]) for key in argvs}


def accelerate_bin() -> str:
    return str(Path(sys.executable).with_name("accelerate"))


def launch_recipe_on_two_cpu_ranks(name: str, *args: str) -> subprocess.CompletedProcess:
    """``accelerate launch`` of recipes/<name>.py on 2 CPU ranks (accelerate_configs/cpu_ddp.yaml)."""
    config = ROOT / "accelerate_configs" / "cpu_ddp.yaml"
    return run([accelerate_bin(), "launch", "--config_file", str(config), str(RECIPES / f"{name}.py"), *args])


# SLURM templates run with stand-ins: srun starts its command once per node, scontrol names the allocation's nodes
FAKE_SRUN = """#!/bin/bash
while [[ $1 == --* ]]; do shift; done  # srun's own options
for node in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$node "$@"; done
"""
FAKE_SCONTROL = '#!/bin/bash\n[ "$*" = "show hostnames gpu[07-09]" ] && printf "gpu07\\ngpu08\\ngpu09\\n"\n'


def slurm_stand_ins(bin_dir: Path, accelerate: str) -> dict[str, str]:
    """Write stand-in ``srun``, ``scontrol`` and ``accelerate`` (the script ``accelerate``) into ``bin_dir``; returns
    the environment of a 3-node allocation (gpu[07-09]) that finds them first on PATH."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, body in {"srun": FAKE_SRUN, "scontrol": FAKE_SCONTROL, "accelerate": accelerate}.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_NNODES": "3", "SLURM_JOB_NODELIST": "gpu[07-09]"}


def squeue_stand_in(bin_dir: Path, prints: str, code: int = 0, job_id: str = "4242") -> dict[str, str]:
    """Write a stand-in ``squeue`` into ``bin_dir`` that appends its arguments to ``bin_dir/squeue.log``, prints
    ``prints`` (to stderr when ``code`` is not 0) and exits ``code``; returns the environment of SLURM job ``job_id``
    that finds it first on PATH."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    log, stream = shlex.quote(str(bin_dir / "squeue.log")), ">&2" if code else ""
    lines = ["#!/bin/bash", f'echo "$*" >> {log}', f'printf "%s\\n" {shlex.quote(prints)} {stream}', f"exit {code}"]
    (bin_dir / "squeue").write_text("\n".join(lines) + "\n")
    (bin_dir / "squeue").chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": job_id}


def assert_rank_zero_built_the_cache(result: subprocess.CompletedProcess, cache_dir: Path) -> None:
    """A 2-rank --cache_frozen run succeeded, rank 0 built the activation caches (train + validation), rank 1
    found them valid and read them."""
    assert result.returncode == 0, result.stderr[-3000:]
    assert "process 0: activation cache for train built" in result.stderr
    assert "process 1: activation cache for train reused" in result.stderr
    assert len(list(cache_dir.iterdir())) == 2


def snapshot(directory: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``directory``."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


# --- tiny text models -------------------------------------------------------------------------------------------

POSITIVE = ["good", "great", "fine", "lovely", "superb"]
NEGATIVE = ["bad", "awful", "poor", "boring", "terrible"]
FILLER = ["the", "film", "was", "a", "plot", "actor", "movie", "story", "very", "quite", "really", "and"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIALS + POSITIVE + NEGATIVE + FILLER

# every architecture the layer table knows; each tiny model has 4 layers
ARCHITECTURES = ["bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta-v2", "mpnet", "modernbert"]
NO_TOKEN_TYPES = {"distilbert", "mpnet", "modernbert", "deberta-v2"}


def make_tokenizer():
    """A word-level fast tokenizer over VOCAB with BERT-style [CLS] ... [SEP] and offsets."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.BertProcessing(("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"]))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )


def tiny_config(model_type: str, num_labels: int = 2, num_layers: int = 4, vocab_size: int = len(VOCAB)):
    """A 32-wide config of ``model_type`` (every type of ARCHITECTURES, and ALBERT)."""
    from transformers import AutoConfig

    common = {"vocab_size": vocab_size, "num_labels": num_labels, "pad_token_id": 0}
    if model_type == "distilbert":
        return AutoConfig.for_model(model_type, dim=32, n_layers=num_layers, n_heads=2, hidden_dim=37, **common)
    kw = dict(hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=2, intermediate_size=37, **common)
    if model_type in ("electra", "albert"):
        kw["embedding_size"] = 16
    if model_type == "modernbert":
        kw.update(bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3, global_attn_every_n_layers=2)
    if model_type in ("roberta", "xlm-roberta", "mpnet"):
        kw.update(max_position_embeddings=80)
    return AutoConfig.for_model(model_type, **kw)


def tiny_model(model_type: str = "bert", num_layers: int = 4):
    """A seeded tiny sequence-classification model of ``model_type``, in memory."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(tiny_config(model_type, num_layers=num_layers))


def make_tiny_text_model(
    directory: Path, model_type: str = "bert", num_layers: int = 4, tokenizer=None, head: bool = True
) -> str:
    """Save a seeded tiny model + tokenizer in HF format (what --model_name_or_path points at).

    ``tokenizer`` defaults to the word-level one over VOCAB; ``head=False`` saves the bare encoder (AutoModel)."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    tokenizer = tokenizer or make_tokenizer()
    torch.manual_seed(0)
    config = tiny_config(model_type, num_layers=num_layers, vocab_size=len(tokenizer))
    model = (AutoModelForSequenceClassification if head else AutoModel).from_config(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def text_batch(model_type: str = "bert"):
    """Two labelled sentences, tokenized for ``model_type``."""
    import torch

    encoded = make_tokenizer()(["good film was great", "bad plot and boring actor"], padding=True, return_tensors="pt")
    if model_type in NO_TOKEN_TYPES:
        encoded.pop("token_type_ids", None)
    encoded["labels"] = torch.tensor([1, 0])
    return encoded


# --- text data and the text recipe -----------------------------------------------------------------------------


def sentence(rng: random.Random, label: int) -> str:
    words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label else NEGATIVE)]
    rng.shuffle(words)
    return " ".join(words)


def make_rows(n: int, seed: int, string_labels: bool = True) -> list[dict]:
    """Alternating labels (the majority-class rate of any even split is exactly 0.5); one sentiment word decides."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        rows.append({"text": sentence(rng, label), "label": ("pos" if label else "neg") if string_labels else label})
    return rows


def make_text_files(directory: Path, fmt: str = "csv", sizes=(64, 16, 16), string_labels: bool = True) -> Path:
    """train / validation / test files in ``fmt`` with a learnable good/bad sentiment signal."""
    import pandas as pd

    for split, n, seed in zip(("train", "validation", "test"), sizes, (1, 2, 3)):
        frame = pd.DataFrame(make_rows(n, seed, string_labels))
        path = directory / f"{split}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "json":
            path.write_text(frame.to_json(orient="records"))
        elif fmt == "jsonl":
            frame.to_json(path, orient="records", lines=True)
        elif fmt == "parquet":
            frame.to_parquet(path)
    return directory


# label sets: each tag is decided by words of its own, so a tiny model can learn all three
LABEL_SET_TAGS = {"praise": POSITIVE, "film": ["film", "movie"], "story": ["plot", "story"]}


def label_set_rows(n: int, seed: int) -> list[dict]:
    """Rows with a 'text' and its 'tags' (a list): praise (a positive word), film, story; every row has one."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        tags = [tag for j, tag in enumerate(LABEL_SET_TAGS) if (i >> j) & 1 or (i % 8 == 0 and j == 0)]
        words = [rng.choice(LABEL_SET_TAGS[tag]) for tag in tags]
        words += [rng.choice(NEGATIVE)] if "praise" not in tags else []
        words += rng.sample(["the", "was", "a", "actor", "very", "quite", "really", "and"], 3)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "tags": tags})
    return rows


def make_label_set_files(directory: Path, layout: str = "separator", sizes=(64, 32, 16)) -> Path:
    """train / validation / test label-set files in one of the three formats: 'list' (JSON lines, a list column
    'tags'), 'separator' (CSV, 'tags' joined with ','), 'columns' (CSV, one 0/1 column per tag)."""
    import pandas as pd

    for split, n, seed in zip(("train", "validation", "test"), sizes, (1, 2, 3)):
        rows = label_set_rows(n, seed)
        if layout == "list":
            pd.DataFrame(rows).to_json(directory / f"{split}.jsonl", orient="records", lines=True)
        elif layout == "separator":
            frame = pd.DataFrame([{"text": r["text"], "tags": ",".join(r["tags"])} for r in rows])
            frame.to_csv(directory / f"{split}.csv", index=False)
        else:
            frame = pd.DataFrame(
                [{"text": r["text"], **{t: int(t in r["tags"]) for t in LABEL_SET_TAGS}} for r in rows]
            )
            frame.to_csv(directory / f"{split}.csv", index=False)
    return directory


def make_regression_files(directory: Path, sizes=(64, 32, 16), targets: int = 1) -> Path:
    """train / validation / test CSVs whose 'score' (and 'tone' with ``targets=2``) a sentiment word decides (+-1.5,
    plus noise, around a mean of 3: the saved model must give these units)."""
    import pandas as pd

    for split, n, seed in zip(("train", "validation", "test"), sizes, (1, 2, 3)):
        rng = random.Random(seed)
        rows = []
        for row in make_rows(n, seed, string_labels=False):
            sign = 1 if row["label"] else -1
            record = {"text": row["text"], "score": 3 + 1.5 * sign + rng.gauss(0, 0.25)}
            if targets == 2:
                record["tone"] = -10 * sign + rng.gauss(0, 1)
            rows.append(record)
        pd.DataFrame(rows).to_csv(directory / f"{split}.csv", index=False)
    return directory


def make_long_text_files(directory: Path, repeat: int, sizes=(16, 8, 8)) -> Path:
    """train / validation / test csv as make_text_files, each text said ``repeat`` times (5 x ``repeat`` words)."""
    import pandas as pd

    for split, n, seed in zip(("train", "validation", "test"), sizes, (1, 2, 3)):
        rows = [{**row, "text": " ".join([row["text"]] * repeat)} for row in make_rows(n, seed)]
        pd.DataFrame(rows).to_csv(directory / f"{split}.csv", index=False)
    return directory


# what a full (not LoRA) bert_cls run writes to --output_dir
TEXT_RUN_FILES = {
    "README.md",
    "classification_report.md",
    "config.json",
    "confusion_matrix.png",
    "data_report.json",
    "freeze_report.json",
    "metrics.json",
    "model.safetensors",
    "run_args.yaml",
    "resolved_settings.json",
    "learning_curve.png",
    "target.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "training_args.bin",
}


def tiny_args(model_dir, data_dir, output_dir, *extra) -> list[str]:
    """bert_cls argv for a 2-step run on the tiny model and the files of make_text_files; ``extra`` overrides."""
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


def tiny_auto_args(model_dir, data_dir, output_dir, *extra) -> list[str]:
    """``tiny_args`` under --num_train_epochs auto: no fixed length, evaluations at the auto cadence (64 training
    rows, batch 8: 8 steps per epoch, two evaluations per epoch; a patience of 4 on the tiny validation split, so
    tests give theirs)."""
    argv = tiny_args(model_dir, data_dir, output_dir, *extra)
    for flag in ("--max_steps", "--save_strategy", "--eval_strategy"):
        at = argv.index(flag)
        del argv[at : at + 2]
    return [*argv, "--num_train_epochs", "auto"]


# --- images -------------------------------------------------------------------------------------------------------

TIMM_MODEL = "test_resnet"  # timm's own test model: 0.37 M parameters, 4 stages, BatchNorm
TIMM_ARGS = ["--model_name_or_path", TIMM_MODEL, "--image_size", "32"]
CLASSES = ("beagle", "collie", "pug")


def _jpeg(path: Path, class_index: int, seed: int) -> None:
    from PIL import Image

    rng = np.random.RandomState(seed)
    pixels = rng.randint(0, 60, size=(40, 48, 3)).astype("uint8")
    pixels[..., class_index] += 180  # each class a different dominant colour: learnable in a few steps
    Image.fromarray(pixels).save(path, format="JPEG")


def write_kaggle_layout(root: Path, per_class: int = 6, corrupt: bool = True) -> tuple[Path, Path]:
    """ROOT/labels.csv (id,breed) + ROOT/train/<id>.jpg; one extra listed file is corrupt. Returns (csv, dir)."""
    images = root / "train"
    images.mkdir(parents=True)
    rows = ["id,breed"]
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            image_id = f"{name[:2]}{i:03d}"
            _jpeg(images / f"{image_id}.jpg", c, seed=100 * c + i)
            rows.append(f"{image_id},{name}")
    if corrupt:
        (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
        rows.append("broken,pug")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv", images


def write_class_folders(root: Path, per_class: int = 6, classes=CLASSES) -> Path:
    """ROOT/<class>/<i>.jpg, ``per_class`` images of each class."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            _jpeg(root / name / f"{i}.jpg", c, seed=1000 + 100 * c + i)
    return root


# --- knowledge injection: a WordPiece tokenizer, tables, data ------------------------------------------------------

KB_WORDS = [
    "the", "film", "was", "good", "bad", "great", "awful", "movie", "i", "liked", "hated", "it", "not",
    "very", "new", "york", "paris", "acme", "corp", "is", "a", "city", "and", "so", ":)", "!", ".", ",",
]  # fmt: skip
KB_PIECES = ["un", "##believ", "##able", "##s"]  # "unbelievable" -> 3 pieces; "goods" -> good ##s
TABLE_KEYS = ["good", "bad", "great", "awful", "unbelievable", "new york", "acme corp", ":)"]
TABLE_DIM = 4


def make_wordpiece_tokenizer():
    """A fast WordPiece tokenizer (lower-casing, BERT pre-tokenisation, [CLS] $A [SEP] with offsets)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + KB_WORDS + KB_PIECES)}
    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # keeps ":)" whole; punctuation words are in the vocab
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    backend.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )


def table_vectors(keys=TABLE_KEYS, dim=TABLE_DIM, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(len(keys), dim)).astype(np.float32)


def write_glove(path: Path, keys=TABLE_KEYS, vectors=None, header=False) -> Path:
    """word2vec/GloVe text; multi-word keys are written tab-separated (the only way they fit in text)."""
    vectors = table_vectors(keys) if vectors is None else vectors
    lines = [f"{len(keys)} {vectors.shape[1]}"] if header else []
    for key, vector in zip(keys, vectors):
        values = [f"{v:.6f}" for v in vector]
        lines.append("\t".join([key, *values]) if " " in key else " ".join([key, *values]))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_npy(path: Path, keys=TABLE_KEYS, vectors=None) -> Path:
    np.save(path, table_vectors(keys) if vectors is None else vectors)
    path.with_suffix(".txt").write_text("\n".join(keys) + "\n")
    return path


def write_safetensors(path: Path, keys=TABLE_KEYS, vectors=None) -> Path:
    from safetensors.numpy import save_file

    save_file(
        {"vectors": table_vectors(keys) if vectors is None else vectors}, str(path), metadata={"keys": json.dumps(keys)}
    )
    return path


KB_TEXTS = [
    ("the film was good", "positive"),
    ("i liked it :) great movie", "positive"),
    ("very good film", "positive"),
    ("unbelievable film , great", "positive"),
    ("the movie was bad", "negative"),
    ("i hated it , awful", "negative"),
    ("not good , very bad", "negative"),
    ("awful film !", "negative"),
]


def entity_spans(text: str) -> list[dict]:
    """Spans of every table key (and one unknown entity 'paris') in ``text``, as an entity column holds them."""
    spans = []
    for key in TABLE_KEYS + ["paris"]:
        start = text.find(key)
        if start >= 0:
            spans.append({"start": start, "end": start + len(key), "key": key})
    return spans


def write_knowledge_dataset(
    path: Path, repeat: int = 2, extra_texts: tuple[str, ...] = ("new york is a city and paris",)
) -> Path:
    """A jsonl file: text, label, entities (spans), entity_id (an ID) and features (3 floats) columns.

    Row j of each repeat has entity_id 'not-in-table' when j % 3 == 0 (3 of the 9 rows), a table key otherwise."""
    rows = []
    texts = KB_TEXTS + [(t, "positive") for t in extra_texts]
    for i in range(repeat):
        for j, (text, label) in enumerate(texts):
            rows.append(
                {
                    "text": text,
                    "label": label,
                    "entities": entity_spans(text),
                    "entity_id": TABLE_KEYS[j % len(TABLE_KEYS)] if j % 3 else "not-in-table",
                    "features": [float(j), 0.5, -1.0 * i],
                }
            )
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --- fuzzing: the property every entry point keeps on any input -----------------------------------------------------

TRACEBACK = "Traceback (most recent call last)"


@dataclasses.dataclass
class Outcome:
    """What one entry-point call gave: the exit code (0, SystemExit's code, or 1 for an uncaught exception, whose
    traceback is then in ``stderr``), the captured output, and the return value."""

    code: int
    stdout: str
    stderr: str
    result: object = None


def call_entry_point(main, argv: list[str]) -> Outcome:
    """``main(argv)`` as its script's ``__main__`` runs it (run_cli: FtpeftError -> one line, exit 2), in this
    process, stdout and stderr captured."""
    from ftpeft.core.errors import run_cli

    stdout, stderr, result, code = io.StringIO(), io.StringIO(), None, 0
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            result = run_cli(main)(list(argv))
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
        except Exception:  # noqa: BLE001  (what the interpreter does with an uncaught one: traceback, exit 1)
            traceback.print_exc()
            code = 1
    return Outcome(code, stdout.getvalue(), stderr.getvalue(), result)


def assert_clean_outcome(
    outcome: Outcome,
    user_files: dict[Path, dict[str, str]],
    output_dir: Path | None = None,
    complete: tuple[str, ...] = (),
) -> None:
    """The fuzz property: exit 0 or 2, no traceback, an error is one ``error: ...`` line, every folder in
    ``user_files`` (folder -> its ``snapshot`` before the call) byte-identical, and ``output_dir`` either absent
    after an error (it did not exist before) or holding every file of ``complete`` after a success."""
    from hypothesis import currently_in_test_context, event

    if currently_in_test_context():  # the share of runs that got as far as training: --hypothesis-show-statistics
        event(f"exit {outcome.code}")
    shown = f"exit {outcome.code}\n{outcome.stderr[-4000:]}"
    assert outcome.code in (0, 2), shown
    assert TRACEBACK not in outcome.stderr + outcome.stdout, shown
    if outcome.code == 2:
        assert outcome.stderr.rstrip().splitlines()[-1].startswith("error: "), shown
    for folder, before in user_files.items():
        assert snapshot(folder) == before, f"{folder} changed\n{shown}"
    if output_dir is not None:
        if outcome.code == 2:
            left = sorted(p.name for p in output_dir.iterdir()) if output_dir.exists() else []
            assert not left, f"a failed run left {output_dir}: {left}\n{shown}"
        else:
            missing = [name for name in complete if not (output_dir / name).exists()]
            assert not missing, f"a successful run lacks {missing} in {output_dir}\n{shown}"


def damage_file(path: Path, how: str, where: float, noise: bytes = b"") -> None:
    """Damage a file as a half-copy or a bad disk would: ``truncate`` it at fraction ``where`` of its size,
    ``overwrite`` bytes from there with ``noise``, ``replace`` it by ``noise``, ``empty`` it, or ``delete`` it."""
    data = path.read_bytes()
    cut = int(len(data) * where)
    if how == "truncate":
        path.write_bytes(data[:cut])
    elif how == "overwrite":
        path.write_bytes(data[:cut] + noise + data[cut + len(noise) :])
    elif how == "replace":
        path.write_bytes(noise)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "delete":
        path.unlink()
    else:
        raise ValueError(f"unknown damage {how!r}")


DAMAGES = ("truncate", "overwrite", "replace", "empty", "delete")


def mean_test_loss(model, tokenizer, csv_path) -> float:
    """Mean cross-entropy of ``model`` on a test.csv of make_text_files (what Trainer reports as test_loss)."""
    import pandas as pd
    import torch

    frame = pd.read_csv(csv_path)
    label2id = {name: index for index, name in model.config.id2label.items()}
    inputs = tokenizer(list(frame["text"]), padding=True, truncation=True, max_length=64, return_tensors="pt")
    labels = torch.tensor([label2id[name] for name in frame["label"]])
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model.eval()(**inputs).logits, labels).item()


# --- preemption: signals this process sends itself at chosen points of training (test only) ------------------------


def signal_at(plan: list[dict], trainer):
    """A TrainerCallback that sends this process each signal of ``plan`` once, at its point: ``{"signal": "TERM",
    "at": "train_begin" | "step_end" | "prediction" | "save", "step": N, "batch": B, "rank": R}`` ("prediction": the
    B-th batch of the evaluation at step N; "save": inside the save of checkpoint-N, between the weights and the
    optimizer; "rank": only that rank). An entry with "pause_until": PATH instead writes the file "paused" and waits
    there until PATH exists (a test then signals the process, or its launcher, from outside at a known step); one with
    "sleep": S sleeps S seconds there (a --max_time cap then passes at that point at the latest).
    Refuses (AssertionError) to send a signal nothing handles."""
    import signal
    import time

    from transformers import TrainerCallback

    pending = [dict(entry) for entry in plan]

    def fire(at: str, step: int, batch: int | None = None) -> None:
        for entry in pending:
            if entry.get("done") or entry["at"] != at or entry.get("step", step) != step:
                continue
            if entry.get("batch", batch) != batch or entry.get("rank", trainer.args.process_index) != (
                trainer.args.process_index
            ):
                continue
            entry["done"] = True
            if "pause_until" in entry:
                Path(entry["paused"]).write_text(str(os.getpid()))
                deadline = time.time() + 120
                while not Path(entry["pause_until"]).exists() and time.time() < deadline:
                    time.sleep(0.02)
                continue
            if "sleep" in entry:
                time.sleep(entry["sleep"])
                continue
            sig = getattr(signal, "SIG" + entry["signal"])
            assert signal.getsignal(sig) not in (signal.SIG_DFL, signal.SIG_IGN, None), f"nothing handles {sig!r}"
            os.kill(os.getpid(), sig)

    class SignalAt(TrainerCallback):
        batches = 0

        def on_train_begin(self, args, state, control, **kwargs):
            fire("train_begin", state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            self.batches = 0
            fire("step_end", state.global_step)

        def on_prediction_step(self, args, state, control, **kwargs):
            self.batches += 1
            fire("prediction", state.global_step, self.batches)

    save = trainer._save_optimizer_and_scheduler

    def save_with_signal(output_dir):
        fire("save", trainer.state.global_step)
        return save(output_dir)

    trainer._save_optimizer_and_scheduler = save_with_signal
    return SignalAt()


@contextlib.contextmanager
def signals_during_training(plan: list[dict], run: str | None = None):
    """Within the block, every ftpeft run's training gets the ``signal_at(plan)`` callback (before ftpeft's own); with
    ``run``, only the training of the run whose --output_dir is named so (a ladder's rung seed: "full-seed42")."""
    from ftpeft.core.lifecycle import Run

    train = Run.train

    def train_with_signals(self, trainer):
        if run is None or self.output_dir.name == run:
            trainer.add_callback(signal_at(plan, trainer))
        return train(self, trainer)

    Run.train = train_with_signals
    try:
        yield
    finally:
        Run.train = train


def run_recipe_with_signals(plan: list[dict], recipe: str, argv: list[str]) -> None:
    """``python recipes/<recipe>.py *argv`` with ``signals_during_training(plan)`` (for a subprocess or a launch)."""
    sys.argv = [str(RECIPES / f"{recipe}.py"), *argv]
    with signals_during_training(plan):
        runpy.run_path(sys.argv[0], run_name="__main__")


def run_scores(out: Path) -> dict:
    """A finished run's validation and test metrics, without its timings."""
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        key: value
        for key, value in metrics.items()
        if key.startswith(("eval_", "test_")) and not key.endswith(("runtime", "per_second"))
    }


def assert_same_end(reference: Path, resumed: Path, weight_files: tuple[str, ...] = ("model.safetensors",)) -> float:
    """A resumed (or recovered) run ends exactly where the uninterrupted one does: the same validation/test scores and
    the same tensors in each of ``weight_files``. Returns the largest weight difference (0.0 when it passes)."""
    import torch
    from safetensors.torch import load_file

    assert run_scores(resumed) == run_scores(reference)
    largest = 0.0
    for weights in weight_files:
        ours, theirs = load_file(resumed / weights), load_file(reference / weights)
        assert ours.keys() == theirs.keys(), weights
        largest = max([largest, *((ours[name] - theirs[name]).abs().max().item() for name in ours)])
        assert all(torch.equal(ours[name], theirs[name]) for name in ours), weights
    return largest


# --- a process without ftpeft -------------------------------------------------------------------------------------

# The process that stands for a machine without ftpeft: any import of ftpeft fails, whatever is on the path; the
# script refuses to go on if ftpeft was importable after all.
NO_FTPEFT = """
import sys

class NoFtpeft:
    def find_spec(self, name, path=None, target=None):
        if name == "ftpeft" or name.startswith("ftpeft."):
            raise ImportError(f"{name}: this process stands for a machine without ftpeft")
        return None

sys.meta_path.insert(0, NoFtpeft())
import json
try:
    import ftpeft  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("ftpeft was importable")
"""


def scores_without_ftpeft(script: str, cases: list[dict], tmp_path: Path) -> dict:
    """Run ``script`` (after ``NO_FTPEFT``) on ``cases`` (its argv[1], a JSON file) in a fresh interpreter, outside the
    repo and without PYTHONPATH; returns the JSON its last stdout line prints (one score list per case)."""
    cases_file = tmp_path / "cases.json"
    cases_file.write_text(json.dumps(cases))
    path = tmp_path / "load_without_ftpeft.py"
    path.write_text(NO_FTPEFT + script)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, str(path), str(cases_file)],
        cwd=tmp_path,  # outside the repo: no ftpeft/ folder on the path either
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
