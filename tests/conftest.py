"""Test-wide settings and the shared fixtures: one torch thread (2-thread torch is several times slower for tiny
models on the reference machine), no Hub (any call fails fast). Fixtures only: the builders are in helpers.py."""

import atexit
import inspect
import os
import shutil
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ["WANDB_DISABLED"] = "true"
# activation caches a test does not place itself (the ladder's, a recipe's default) stay out of the user's home
os.environ["FTPEFT_CACHE"] = tempfile.mkdtemp(prefix="ftpeft-test-cache-")
atexit.register(shutil.rmtree, os.environ["FTPEFT_CACHE"], ignore_errors=True)

import pytest
from helpers import make_text_files, make_tiny_text_model
from hypothesis import HealthCheck, Phase, settings

# The fuzz suite (test_fuzz.py): CI runs the same few examples every time; HYPOTHESIS_PROFILE=long runs many more
# and, with -m fuzz_long, the long lane's deeper tests too. Examples train tiny models: no deadline.
_FUZZ = {
    "deadline": None,
    "phases": [Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no "explain": minutes of reruns
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("ci", derandomize=True, database=None, max_examples=6, print_blob=True, **_FUZZ)
settings.register_profile("long", max_examples=150, print_blob=True, **_FUZZ)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# What a test module writes when its tests launch several torch.distributed ranks (helpers.py's launchers, accelerate
# launch, torchrun): each launch binds a rendezvous port, so under pytest-xdist (-n) these tests share one worker.
LAUNCHES_RANKS = ("accelerate_bin()", "launch_recipe_on_two_cpu_ranks", "torchrun")
RANKS_GROUP = pytest.mark.xdist_group("launches-ranks")


def launches_ranks(item) -> bool:
    """A slow test in a module that launches ranks (its fast tests launch none: they run anywhere)."""
    module = getattr(item, "module", None)
    if module is None or "slow" not in item.keywords:
        return False
    source = inspect.getsource(module)
    return any(pattern in source for pattern in LAUNCHES_RANKS)


def pytest_collection_modifyitems(config, items):
    """The fuzz_long tests run only in the long lane (HYPOTHESIS_PROFILE=long); rank launches run one at a time."""
    long_lane = os.environ.get("HYPOTHESIS_PROFILE") == "long"
    skip = pytest.mark.skip(reason="long fuzz lane: set HYPOTHESIS_PROFILE=long")
    for item in items:
        if "fuzz_long" in item.keywords and not long_lane:
            item.add_marker(skip)
        if launches_ranks(item):
            item.add_marker(RANKS_GROUP)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A 4-layer BERT (hidden 32) + word-level tokenizer saved in HF format."""
    return make_tiny_text_model(tmp_path_factory.mktemp("tiny_bert"), "bert")


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory):
    """A tiny RoBERTa: 80 position embeddings, 78 usable (its positions start after the padding index)."""
    return make_tiny_text_model(tmp_path_factory.mktemp("tiny_roberta"), "roberta")


@pytest.fixture(scope="session")
def text_csv_dir(tmp_path_factory):
    """train.csv / validation.csv / test.csv with a learnable good/bad sentiment signal."""
    return make_text_files(tmp_path_factory.mktemp("text_data"))
