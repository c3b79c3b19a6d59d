"""benchmarks/scaling_note.py: its numbers follow from its inputs, and the committed note from the models."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
from helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import scaling_note
from scaling_note import Assumptions, Mode, allreduce_bytes, ring_factor, step_row

NOTE = ROOT / "benchmarks" / "results" / "scaling_note.md"
BERT_BASE = 109_483_778  # BertForSequenceClassification, 2 labels
# LoRA r=8 on query and value of 12 layers (A: 768 x 8, B: 8 x 768) + the pooler and the head it trains in full
BERT_LORA = 12 * 2 * (768 * 8 + 8 * 768) + (768 * 768 + 768) + (768 * 2 + 2)


def test_ring_all_reduce_volume_and_time_follow_from_the_inputs():
    assumptions = Assumptions()
    full = Mode("m", "full", 1_000_000, 1_000_000, 4 * 10**12)
    lora = Mode("m", "LoRA", 1_010_000, 10_000, 3 * 10**12)
    assert ring_factor(8) == 1.75 and ring_factor(16) == 1.875
    assert allreduce_bytes(lora, 16, assumptions) == 10_000 * 4 * 1.875
    one_node, two_nodes = step_row(full, full, 1, assumptions), step_row(full, full, 2, assumptions)
    assert one_node["comm_ms"] == pytest.approx(1e3 * 4e6 * 1.75 / 450e9)  # NVLink
    assert two_nodes["comm_ms"] == pytest.approx(1e3 * 4e6 * 1.875 / (100e9 / 8))  # the node's 100 Gb/s NIC
    assert two_nodes["compute_ms"] == pytest.approx(1e3 * 4e12 / 200e12)
    assert two_nodes["step_ms"] == pytest.approx(two_nodes["compute_ms"] + two_nodes["comm_ms"])
    assert step_row(lora, full, 2, assumptions)["traffic_vs_full"] == pytest.approx(0.01)


def test_the_committed_note_follows_from_its_inputs():
    record = json.loads(NOTE.with_suffix(".json").read_text())
    assumptions = Assumptions(**{**record["assumptions"], "nodes": tuple(record["assumptions"]["nodes"])})
    assert assumptions == Assumptions()  # the note was written with the script's current assumptions
    modes = [Mode(**mode) for mode in record["modes"]]
    by_name = {(mode.model, mode.mode): mode for mode in modes}
    assert by_name["BERT-base", "full"].trainable_params == BERT_BASE
    assert by_name["BERT-base", "LoRA r=8"].trainable_params == BERT_LORA
    assert record["rows"] == scaling_note.rows_for(modes, assumptions)
    text = NOTE.read_text()
    for row in record["rows"]:
        if row["mode"] == "LoRA r=8":  # the LoRA volume: its trainable params x 4 bytes x the ring factor
            assert row["allreduce_mb_per_gpu"] == pytest.approx(BERT_LORA * 4 * ring_factor(row["gpus"]) / 1e6)
        if row["mode"].startswith("last-"):  # last-k shrinks the traffic by exactly the frozen fraction
            assert row["traffic_vs_full"] == pytest.approx(row["trainable_fraction"])
            assert row["trainable_fraction"] < 1
        assert f"| {row['model']} | {row['mode']} | {row['nodes']} x 8 | {row['allreduce_mb_per_gpu']:.1f} |" in text
    assert "| link between nodes | 100 Gb/s per node (one NIC) |" in text


@pytest.mark.slow  # counts the FLOPs of eight meta-device models (~15 s)
def test_counting_reproduces_the_committed_inputs(tmp_path):
    assumptions = Assumptions()
    modes = scaling_note.count_modes(assumptions)
    record = json.loads(NOTE.with_suffix(".json").read_text())
    assert [dataclasses.asdict(mode) for mode in modes] == record["modes"]
    rows = scaling_note.write_note(modes, assumptions, tmp_path / "note.md")
    assert (tmp_path / "note.md").read_text() == NOTE.read_text() and rows == record["rows"]
