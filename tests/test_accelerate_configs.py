"""Every shipped accelerate config loads with accelerate's own loader and opens with its launch command."""

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from helpers import ROOT

CONFIGS = sorted((ROOT / "accelerate_configs").glob("*.yaml"))
EXPECTED = {
    "cpu": ("NO", 1),
    "cpu_ddp": ("MULTI_GPU", 2),
    "single_gpu": ("NO", 1),
    "multi_gpu": ("MULTI_GPU", 8),
    "fsdp": ("FSDP", 8),
    "deepspeed_zero2": ("DEEPSPEED", 8),
    "deepspeed_zero3": ("DEEPSPEED", 8),
    "multi_node": ("MULTI_GPU", 16),
}


def test_the_expected_set_is_shipped():
    assert {c.stem for c in CONFIGS} == set(EXPECTED)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_loads_with_accelerate_and_documents_its_command(path):
    config = load_config_from_file(str(path))
    distributed_type, processes = EXPECTED[path.stem]
    assert config.distributed_type.value == distributed_type
    assert config.num_processes == processes
    header = path.read_text().split("\ncompute_environment")[0]
    assert header.startswith("#") and "accelerate launch" in header and f"accelerate_configs/{path.name}" in header
    if path.stem == "cpu_ddp":
        assert config.use_cpu  # MULTI_GPU + use_cpu: the way to get 2 real CPU ranks
    if path.stem == "fsdp":
        assert config.fsdp_config["fsdp_use_orig_params"]  # partial freezing + per-group LRs need it
    if path.stem.startswith("deepspeed"):
        assert config.deepspeed_config["zero_stage"] == int(path.stem[-1])
