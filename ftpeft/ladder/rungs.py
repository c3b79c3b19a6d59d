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
    unfreeze_last: int | None = None  # its depth k, None for 'all'
    cached: bool = False  # trains from the frozen-prefix activation cache (--cache_frozen)
    scored_from_cache: bool = False  # a float32 cache: validation and test are scored from it too
    lora: bool = False


def choose_ks(num_layers: int, best_depth: int, probe_layers: int) -> tuple[int, int]:
    """Two depths for last-k from the probe: retrain what sits above the best-transferring layer, and twice that.

    ``best_depth`` is on the probe's scale (0..probe_layers); ``num_layers`` is the model's trainable-group count.
    """
    above = round((probe_layers - best_depth) / max(probe_layers, 1) * num_layers)
    small = min(max(1, above), max(1, num_layers - 1))
    large = min(max(small + 1, 2 * small), max(1, num_layers - 1))
    return small, large


def build_rungs(
    names: list[str],
    num_layers: int,
    ks: tuple[int, int],
    cached_ks: set[int],
    cache_flags: list[str],
    cache_scores: bool,
) -> list[Rung]:
    """The Rung of each name asked for (probe_head is measured by the probe itself, not run here); the depths in
    ``cached_ks`` train from the cache (``cache_flags``: --cache_frozen and its dtype; ``cache_scores``: that
    dtype is exact, so those runs score from the cache too)."""
    small, large = ks

    def last_k(name: str, k: int, what: str) -> Rung:
        cached = k in cached_ks
        flags = ["--unfreeze_last", str(k), *(cache_flags if cached else [])]
        return Rung(name, flags, what, k / num_layers, k, cached, cached and cache_scores)

    table = {
        "head_only": last_k("head_only", 0, "head only (frozen backbone)"),
        "last_k_small": last_k("last_k_small", small, f"top {small} layers + head"),
        "last_k_large": last_k("last_k_large", large, f"top {large} layers + head"),
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


# a last-k rung that trains this share of the parameters or more is full fine-tuning under another name: a CNN's
# top stages hold nearly all its weights (EfficientNet-Lite0's top 6 of 7 stages: 99.9%), and its backward pass
# runs through nearly every layer, so it costs a second full run and answers nothing full does not
NEAR_FULL_SHARE = 0.99


def near_full_rungs(
    rungs: list[Rung], shares: list[float] | None, named: frozenset[str] = frozenset()
) -> dict[str, str]:
    """The last-k rungs of ``rungs`` that train at least NEAR_FULL_SHARE of the parameters, when ``full`` is among
    them: name -> the reason they are skipped. ``shares[k]``: the share ``--unfreeze_last k`` trains (the probe's
    ``ftpeft.core.freezing.trained_shares``; None: unknown, nothing skipped). A rung in ``named`` (asked for by name
    in --rungs) runs as asked."""
    if not shares or not any(rung.name == "full" for rung in rungs):
        return {}
    return {
        rung.name: (
            f"--unfreeze_last {rung.unfreeze_last} trains {100 * shares[rung.unfreeze_last]:.1f}% of the parameters: "
            "the full rung is this run"
        )
        for rung in rungs
        if rung.name not in named
        and rung.unfreeze_last
        and rung.unfreeze_last < len(shares)
        and shares[rung.unfreeze_last] >= NEAR_FULL_SHARE
    }


def estimate_seconds(
    rung: Rung, seconds_per_row: float, rows: dict[str, int], epochs: float, cache_built: bool = False
) -> float:
    """Predicted wall time of one run of ``rung``, before calibration; ``cache_built``: its cache exists already."""
    train, val, test = rows.get("train", 0), rows.get("validation", 0), rows.get("test", 0)
    top = max(rung.trained_fraction, 0.02)  # the share of the forward a cached run still computes
    final = val + test  # the last evaluation and the one test pass
    if rung.cached:  # one pass builds the cache (unless built); epochs then run the trained top only
        per_epoch = train * (1 + BACKWARD) * top + val * top
        one_off = 0.0 if cache_built else train + val + (test if rung.scored_from_cache else 0)
        final = final * top if rung.scored_from_cache else final
    else:
        backward = LORA_BACKWARD if rung.lora else BACKWARD * rung.trained_fraction
        per_epoch = train * (1 + backward) + val
        one_off = 0.0
    return seconds_per_row * (one_off + epochs * per_epoch + final)
