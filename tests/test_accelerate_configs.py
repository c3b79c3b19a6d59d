"""Every shipped accelerate config loads with accelerate's own loader and opens with its launch command."""

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from helpers import ROOT, slurm_stand_ins

CONFIGS = sorted((ROOT / "accelerate_configs").glob("*.yaml"))
EXPECTED = {
    "cpu": ("NO", 1),
    "cpu_ddp": ("MULTI_GPU", 2),
    "single_gpu": ("NO", 1),
    "multi_gpu": ("MULTI_GPU", 8),
    "fsdp": ("FSDP", 8),
    "fsdp_cpu": ("FSDP", 2),
    "deepspeed_zero2": ("DEEPSPEED", 8),
    "deepspeed_zero2_cpu": ("DEEPSPEED", 2),
    "deepspeed_zero3": ("DEEPSPEED", 8),
    "deepspeed_zero3_cpu": ("DEEPSPEED", 2),
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
        assert config.deepspeed_config["zero_stage"] == int(path.stem.split("_")[1].removeprefix("zero"))
    if path.stem.endswith("_cpu") and path.stem.startswith(("deepspeed", "fsdp")):
        assert not config.use_cpu  # accelerate skips DeepSpeed and FSDP with it; ftpeft picks gloo on CPU ranks
    if path.stem == "fsdp_cpu":  # the default classes also wrap BertEmbeddings, and torch fails (README)
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "BertLayer"


# --- SLURM templates: run with stand-in srun/scontrol/accelerate that record the launch line of each node ---------

SBATCH = sorted((ROOT / "accelerate_configs" / "slurm").glob("*.sbatch"))
SBATCH_CONFIG = {
    "ddp": "multi_node.yaml",
    "fsdp": "fsdp.yaml",
    "deepspeed_zero2": "deepspeed_zero2.yaml",
    "deepspeed_zero3": "deepspeed_zero3.yaml",
}


def test_one_slurm_template_per_engine():
    assert {path.stem for path in SBATCH} == set(SBATCH_CONFIG)


@pytest.mark.parametrize("path", SBATCH, ids=lambda p: p.stem)
def test_slurm_template_launches_each_node_with_its_rank(path, tmp_path):
    import subprocess

    assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0
    text = path.read_text()
    assert f"sbatch accelerate_configs/slurm/{path.name}" in text and "#SBATCH --nodes=" in text
    env = slurm_stand_ins(tmp_path / "bin", accelerate='#!/bin/bash\necho "$*" >> "$LAUNCH_LOG"\n')
    log = tmp_path / "launches.txt"
    result = subprocess.run(
        ["bash", str(path), "--unfreeze-last", "2"],
        check=False,
        env={**env, "LAUNCH_LOG": str(log)},
        cwd=ROOT,
        text=True,
    )
    assert result.returncode == 0
    config = f"accelerate_configs/{SBATCH_CONFIG[path.stem]}"
    assert load_config_from_file(str(ROOT / config)).distributed_type.value in ("MULTI_GPU", "FSDP", "DEEPSPEED")
    assert log.read_text().splitlines() == [
        f"launch --config_file {config} --num_machines 3 --machine_rank {rank} --num_processes 24 "
        "--main_process_ip gpu07 --main_process_port 29500 recipes/bert_cls.py --unfreeze-last 2"
        for rank in range(3)
    ]
