"""Test-wide settings and the shared fixtures: one torch thread (2-thread torch is several times slower for tiny
models on the reference machine), no Hub (any call fails fast). Fixtures only: the builders are in helpers.py."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ["WANDB_DISABLED"] = "true"

import pytest
from helpers import make_text_files, make_tiny_text_model


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A 4-layer BERT (hidden 32) + word-level tokenizer saved in HF format."""
    return make_tiny_text_model(tmp_path_factory.mktemp("tiny_bert"), "bert")


@pytest.fixture(scope="session")
def text_csv_dir(tmp_path_factory):
    """train.csv / validation.csv / test.csv with a learnable good/bad sentiment signal."""
    return make_text_files(tmp_path_factory.mktemp("text_data"))
