"""The checks of scripts/gpu_check.sh: make the tiny run's inputs, then verify what an FSDP / ZeRO run left behind.

    python scripts/gpu_check.py make WORK                # a seeded 4-layer BERT + train/validation/test CSVs
    python scripts/gpu_check.py verify WORK ENGINE       # ENGINE: fsdp, deepspeed_zero2 or deepspeed_zero3

``verify`` reads WORK/ENGINE.log and WORK/ENGINE (the run's --output_dir) and exits 1 with one line per failed
check: the engine named in the log wraps the model on every rank, sharding engines hold about 1/N of the parameter
bytes per rank, exactly the unfrozen parameters changed (--unfreeze-last 2), and the saved model loads in pipeline().
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAINED = ("bert.encoder.layer.2.", "bert.encoder.layer.3.", "bert.pooler.", "classifier.")  # --unfreeze-last 2
WRAPPERS = {
    "fsdp": "FullyShardedDataParallel",
    "deepspeed_zero2": "DeepSpeedEngine",
    "deepspeed_zero3": "DeepSpeedEngine",
}
ENGINE_LINE = {
    "fsdp": "engine: FSDP version",
    "deepspeed_zero2": "engine: ZeRO stage 2",
    "deepspeed_zero3": "engine: ZeRO stage 3",
}
SHARDS_PARAMETERS = {"fsdp", "deepspeed_zero3"}


def make(work: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import make_text_files, make_tiny_text_model

    (work / "model").mkdir(parents=True, exist_ok=True)
    (work / "data").mkdir(exist_ok=True)
    make_tiny_text_model(work / "model")
    make_text_files(work / "data")


def problems(work: Path, engine: str) -> list[str]:
    """What is wrong with the run of ``engine`` in ``work`` (empty when every check passes)."""
    import torch
    from transformers import AutoModelForSequenceClassification, pipeline

    log = (work / f"{engine}.log").read_text()
    found = []
    if ENGINE_LINE[engine] not in log:
        found.append(f"{engine}: the log does not say '{ENGINE_LINE[engine]} ... wraps the model'")
    held = re.findall(r"rank (\d+): model wrapped by (\w+); holds ([\d,]+) of ([\d,]+) parameter bytes", log)
    if len(held) < 2:
        found.append(f"{engine}: fewer than 2 ranks reported their wrapper ({len(held)})")
    for rank, wrapper, mine, full in held:
        if not wrapper.startswith(WRAPPERS[engine]):
            found.append(f"{engine}: rank {rank} is wrapped by {wrapper}, not {WRAPPERS[engine]}")
        share = int(mine.replace(",", "")) / int(full.replace(",", ""))
        expected = 1 / len(held) if engine in SHARDS_PARAMETERS else 1.0
        if abs(share - expected) > 0.1:
            found.append(f"{engine}: rank {rank} holds {share:.0%} of the parameter bytes, expected ~{expected:.0%}")
    try:
        before = AutoModelForSequenceClassification.from_pretrained(work / "model").state_dict()
        after = AutoModelForSequenceClassification.from_pretrained(work / engine).state_dict()
    except (OSError, ValueError) as error:
        return [*found, f"{engine}: the saved model does not load with from_pretrained ({error})"]
    changed = {name for name in before if not torch.equal(before[name], after[name].to(before[name].dtype))}
    expected_changed = {name for name in before if name.startswith(TRAINED)}
    if changed != expected_changed:
        wrong = sorted(changed - expected_changed)[:3]
        missing = sorted(expected_changed - changed)[:3]
        found.append(f"{engine}: frozen parameters changed {wrong} / trained ones did not {missing}")
    label = pipeline("text-classification", model=str(work / engine))("good film")[0]["label"]
    if label not in ("neg", "pos"):
        found.append(f"{engine}: pipeline() gives label {label!r}, not neg/pos")
    return found


def main(argv: list[str]) -> int:
    if argv[:1] == ["make"] and len(argv) == 2:
        make(Path(argv[1]))
        return 0
    if argv[:1] == ["verify"] and len(argv) == 3 and argv[2] in WRAPPERS:
        found = problems(Path(argv[1]), argv[2])
        print("\n".join(found) or f"{argv[2]}: all checks passed")
        return 1 if found else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
