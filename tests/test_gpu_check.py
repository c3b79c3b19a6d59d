"""scripts/gpu_check.sh (FSDP and ZeRO on GPUs, which CI lacks): its shell parses, it refuses a machine without 2
GPUs, and its verifier passes a good run and names each fault of a bad one."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import ROOT, subprocess_env

sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check


def test_the_script_parses_and_needs_two_gpus():
    script = ROOT / "scripts" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    result = subprocess.run(
        ["bash", str(script)], check=False, env=subprocess_env(NUM_GPUS="1"), capture_output=True, text=True
    )
    assert (result.returncode, result.stderr) == (2, "gpu_check: needs 2 or more GPUs, found 1\n")
    for engine in gpu_check.WRAPPERS:  # every engine it runs has its shipped config
        assert (ROOT / "accelerate_configs" / f"{engine}.yaml").is_file()


def fake_run(work, engine, shares, touch_frozen=False):
    """What a run of ``engine`` leaves: a log with each rank's share of the parameters, and a trained model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(work / "model")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(gpu_check.TRAINED) or (
                touch_frozen and name == "bert.embeddings.word_embeddings.weight"
            ):
                param.add_(0.01)
    model.config.id2label, model.config.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
    model.save_pretrained(work / engine)
    AutoTokenizer.from_pretrained(work / "model").save_pretrained(work / engine)
    lines = [f"INFO ftpeft: {gpu_check.ENGINE_LINE[engine]} wraps the model (accelerate: DEEPSPEED, 2 process(es))"]
    for rank, share in enumerate(shares):
        held = int(1000 * share)
        lines.append(
            f"WARNING ftpeft: rank {rank}: model wrapped by DeepSpeedEngine; holds {held:,} of 1,000 parameter bytes"
        )
    (work / f"{engine}.log").write_text("\n".join(lines))


@pytest.mark.slow  # loads the model four times and builds two pipelines (~7 s)
def test_the_verifier_passes_a_good_run_and_names_each_fault(tmp_path):
    gpu_check.make(tmp_path)
    fake_run(tmp_path, "deepspeed_zero3", shares=(0.5, 0.5))
    assert gpu_check.problems(tmp_path, "deepspeed_zero3") == []
    fake_run(tmp_path, "deepspeed_zero3", shares=(1.0, 1.0), touch_frozen=True)
    found = gpu_check.problems(tmp_path, "deepspeed_zero3")
    assert len(found) == 3, found
    assert "rank 0 holds 100% of the parameter bytes, expected ~50%" in found[0]
    assert "frozen parameters changed ['bert.embeddings.word_embeddings.weight']" in found[2]
