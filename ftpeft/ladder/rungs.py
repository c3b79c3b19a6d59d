"""The rungs: each a real run of one strategy through the recipe's own flags, with a cost estimate.

A rung is the flags it adds to the user's command. Its cost is estimated from the probe's timed frozen
forward pass (seconds per row) and the data size, then scaled by how the rungs that already ran compared
with their own estimates.
"""

from __future__ import annotations

import dataclasses

# forward-pass equivalents per training row of one epoch: a forward, plus a backward (~2 forwards) through
# what trains; LoRA back-propagates through every layer's activations but computes no weight gradients
BACKWARD = 2.0
LORA_BACKWARD = 1.5


@dataclasses.dataclass
class Rung:
    name: str
    flags: list[str]  # added to the user's recipe flags
    what: str  # one line for the table
    trained_fraction: float  # share of the layers whose weights train (0 = head only, 1 = all)
    cached: bool = False  # trains from the frozen-prefix activation cache
    lora: bool = False


def choose_ks(num_layers: int, best_depth: int, probe_layers: int) -> tuple[int, int]:
    """Two depths for last-k from the probe: retrain what sits above the best-transferring layer, and twice that.

    ``best_depth`` is on the probe's scale (0..probe_layers); ``num_layers`` is the model's trainable-group count.
    """
    above = round((probe_layers - best_depth) / max(probe_layers, 1) * num_layers)
    small = min(max(1, above), max(1, num_layers - 1))
    large = min(max(small + 1, 2 * small), max(1, num_layers - 1))
    return small, large


def build_rungs(names: list[str], num_layers: int, ks: tuple[int, int], use_cache: bool) -> list[Rung]:
    """The Rung of each name asked for (probe_head is measured by the probe itself, not run here)."""
    small, large = ks
    cache = ["--cache_frozen"] if use_cache else []
    table = {
        "head_only": Rung("head_only", ["--unfreeze_last", "0", *cache], "head only (frozen backbone)", 0.0, use_cache),
        "last_k_small": Rung(
            "last_k_small",
            ["--unfreeze_last", str(small), *cache],
            f"top {small} layers + head",
            small / num_layers,
            use_cache,
        ),
        "last_k_large": Rung(
            "last_k_large",
            ["--unfreeze_last", str(large), *cache],
            f"top {large} layers + head",
            large / num_layers,
            use_cache,
        ),
        "lora": Rung("lora", ["--use_peft", "--unfreeze_last", "all"], "LoRA adapters + head", 0.0, lora=True),
        "full": Rung("full", ["--unfreeze_last", "all"], "everything (layer-wise LR decay)", 1.0),
        "lp_ft": Rung("lp_ft", ["--unfreeze_last", "all", "--lp_ft"], "LP-FT: head first, then everything", 1.0),
        "gradual": Rung(
            "gradual", ["--unfreeze_last", "all", "--gradual_unfreeze"], "gradual unfreezing (ULMFiT)", 0.6
        ),
    }
    if small == large:
        table.pop("last_k_large")
    return [table[name] for name in names if name in table]


def estimate_seconds(rung: Rung, seconds_per_row: float, rows: dict[str, int], epochs: float) -> float:
    """Predicted wall time of one run of ``rung``, before calibration."""
    train, val, test = rows.get("train", 0), rows.get("validation", 0), rows.get("test", 0)
    if rung.cached:  # one pass builds the cache; epochs then run the trained top only
        per_epoch = train * (1 + BACKWARD) * max(rung.trained_fraction, 0.02) + val * max(rung.trained_fraction, 0.02)
        one_off = train + val
    else:
        backward = LORA_BACKWARD if rung.lora else BACKWARD * rung.trained_fraction
        per_epoch = train * (1 + backward) + val
        one_off = 0.0
    final = val + test  # the last evaluation and the one test pass
    return seconds_per_row * (one_off + epochs * per_epoch + final)
