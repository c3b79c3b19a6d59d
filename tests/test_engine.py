"""The engine the user asked for (DDP, FSDP, DeepSpeed) is the one accelerate sets up, or the run stops before any work."""

import re
import types

import pytest
import torch
from helpers import ROOT, accelerate_bin, run, tiny_args

from ftpeft.core.engine import EngineRequest, asked_engine, engine_mismatch, local_parameter_bytes, refused_flags


def _args(**fields):
    return types.SimpleNamespace(**{"fsdp": None, "fsdp_config": None, "deepspeed": None, **fields})


@pytest.mark.parametrize(
    "environ, fields, engine, detail",
    [
        ({}, {}, None, "data parallel"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, {}, "FSDP", "FSDP version 2"),
        ({}, {"fsdp": ["full_shard"], "fsdp_config": {"version": 1}}, "FSDP", "FSDP version 1"),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, {}, "DEEPSPEED", "ZeRO stage 3"),
        ({}, {"deepspeed": {"zero_optimization": {"stage": 2}}}, "DEEPSPEED", "ZeRO stage 2"),
        ({"ACCELERATE_USE_FSDP": "false"}, {}, None, "data parallel"),
    ],
)
def test_what_the_launch_asked_for(environ, fields, engine, detail):
    asked = asked_engine(_args(**fields), environ)
    assert (asked.engine, asked.detail) == (engine, detail)


@pytest.mark.parametrize(
    "asked, distributed_type, refused",
    [
        (EngineRequest("FSDP", "FSDP version 2", "the accelerate config"), "MULTI_CPU", True),  # CPU ranks: DDP
        (EngineRequest("FSDP", "FSDP version 2", "the accelerate config"), "NO", True),  # one process: no wrapper
        (EngineRequest("FSDP", "FSDP version 2", "the accelerate config"), "MULTI_GPU", False),  # upgraded to FSDP
        (EngineRequest("FSDP", "FSDP version 1", "--fsdp"), "FSDP", False),
        (EngineRequest("DEEPSPEED", "ZeRO stage 2", "the accelerate config"), "MULTI_CPU", True),
        (EngineRequest("DEEPSPEED", "ZeRO stage 3", "the accelerate config"), "MULTI_GPU", True),
        (EngineRequest("DEEPSPEED", "ZeRO stage 3", "the accelerate config"), "DEEPSPEED", False),
        (EngineRequest(None, "data parallel", "the launch"), "MULTI_CPU", False),
        (EngineRequest(None, "data parallel", "the launch"), "NO", False),
    ],
)
def test_asked_versus_what_accelerate_set_up(asked, distributed_type, refused):
    reason = engine_mismatch(asked, distributed_type)
    assert (reason is not None) == refused
    if refused:  # names both sides and what to do
        assert asked.detail in reason and f"accelerate set up {distributed_type}" in reason and "cpu_ddp.yaml" in reason


def test_cache_frozen_is_refused_where_parameters_are_sharded():
    fsdp = EngineRequest("FSDP", "FSDP version 2", "the accelerate config")
    zero3 = EngineRequest("DEEPSPEED", "ZeRO stage 3", "the accelerate config")
    zero2 = EngineRequest("DEEPSPEED", "ZeRO stage 2", "the accelerate config")
    ddp = EngineRequest(None, "data parallel", "the launch")
    assert "--cache_frozen cannot run under FSDP" in refused_flags(fsdp, cache_frozen=True)
    assert "--cache_frozen cannot run under DeepSpeed ZeRO stage 3" in refused_flags(zero3, cache_frozen=True)
    assert refused_flags(zero2, cache_frozen=True) is None  # ZeRO-2 keeps whole parameters on every rank
    assert refused_flags(ddp, cache_frozen=True) is None
    assert refused_flags(fsdp, cache_frozen=False) is None


def test_parameter_bytes_count_the_local_shard():
    class Shard(torch.nn.Parameter):  # what a DTensor parameter offers: its full shape, and to_local()
        def to_local(self):
            return self.detach()[: self.shape[0] // 2]

    model = torch.nn.Linear(4, 8)  # weight 32 + bias 8 floats
    assert local_parameter_bytes(model) == (40 * 4, 40 * 4)
    model.weight = Shard(model.weight.detach())
    assert local_parameter_bytes(model) == ((16 + 8) * 4, 40 * 4)


FSDP_ON_CPU = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
use_cpu: true
num_machines: 1
num_processes: 2
machine_rank: 0
mixed_precision: 'no'
rdzv_backend: static
same_network: true
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_cpu_ram_efficient_loading: false
  fsdp_offload_params: false
  fsdp_reshard_after_forward: true
  fsdp_state_dict_type: FULL_STATE_DICT
"""


@pytest.mark.slow
def test_fsdp_config_on_cpu_ranks_exits_2_instead_of_training_with_ddp(tiny_bert_dir, text_csv_dir, tmp_path):
    # accelerate 1.15 turns this config into MULTI_CPU ranks wrapped by DistributedDataParallel, silently
    config = tmp_path / "fsdp_cpu.yaml"
    config.write_text(FSDP_ON_CPU)
    out = tmp_path / "fsdp"
    script = str(ROOT / "recipes/bert_cls.py")
    argv = tiny_args(tiny_bert_dir, text_csv_dir, out, "--unfreeze-last", "2")
    result = run([accelerate_bin(), "launch", "--config_file", str(config), script, *argv], timeout=300)
    assert result.returncode != 0
    expected = (
        "error: the accelerate config asks for FSDP (FSDP version 2) but accelerate set up MULTI_CPU (CPU ranks): "
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and all(line.startswith(expected) for line in errors)  # one line from each rank
    # the launcher exits 1 with its own ChildFailedError traceback, reporting each rank's usage exit code
    assert "exitcode  : 2" in result.stderr and "DistributedDataParallel" not in result.stderr
    assert not out.exists()  # before any work


def test_the_launching_table_names_existing_tests():
    readme = (ROOT / "README.md").read_text()
    launching = readme.split("## Launching", 1)[1].split("\n## ", 1)[0]
    assert "| where | command | tested |" in launching
    named = set(re.findall(r"tests/test_\w+\.py", launching))
    assert named and all((ROOT / path).is_file() for path in named)
