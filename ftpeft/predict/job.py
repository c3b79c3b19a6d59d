"""``ftpeft predict``: one finished run, one input, one CSV -- under ``accelerate launch`` each rank scores its
share of the rows and the main process writes the merged file."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from ftpeft.predict.args import PredictArguments
from ftpeft.predict.runs import SavedRun

LOADERS = {  # run kind -> "module:function" building its predictor (imported on use: each pulls its own stack)
    "text": "ftpeft.predict.text:load_text_predictor",
    "knowledge": "ftpeft.predict.text:load_text_predictor",
    "adapter": "ftpeft.predict.text:load_adapter_predictor",
    "timm": "ftpeft.predict.image:load_image_predictor",
    "head": "ftpeft.predict.heads:load_head_predictor",
}


def parse_predict_args(argv: list[str]) -> PredictArguments:
    """``OUTPUT_DIR --input ... --output ...`` (the first word is --run_dir) through the recipes' parser."""
    from ftpeft.core.config import parse_args

    argv = list(argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--run_dir", *argv]
    (args,) = parse_args((PredictArguments,), argv)
    return args


def input_modality(run: SavedRun) -> str:
    """What --input must be for this run: 'image' (a folder) or 'text' (a file)."""
    if run.kind == "timm":
        return "image"
    if run.kind == "head":
        from ftpeft.predict.heads import head_config

        return head_config(run)["features"].get("modality") or "image"
    return "text"


# glibc's mallopt parameters (malloc.h) and the values ftpeft predict sets on CPU (reuse_freed_tensor_memory)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 * 2**20  # the largest mmap threshold glibc accepts on 64-bit (4 MiB x sizeof(long))
TRIM_THRESHOLD_BYTES = 2**30


def reuse_freed_tensor_memory(libc=None) -> bool:
    """Keep the memory of freed tensors in this process for the next batch (CPU inference).

    glibc maps each block over its mmap threshold afresh and returns it to the OS when freed, so every batch pays
    page faults for its activations again; how soon the threshold adapts depends on what the process did before,
    which is why the same scoring loop ran 270-383 rows/s from process to process. A fixed 32 MiB threshold and a
    1 GiB trim threshold keep those blocks in the heap: the MNIST loop at batch 32 ran 466-507 rows/s in every
    process (``benchmarks/process_probe.py ... mallopt``). Without glibc's mallopt nothing changes. Returns whether
    it applied."""
    import ctypes
    import ctypes.util

    if libc is None:
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
        except OSError:
            libc = None
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


def load_predictor(run: SavedRun, device):
    """The run's torch predictor on ``device``; on CPU, freed tensor memory is kept for reuse first."""
    import importlib

    if getattr(device, "type", str(device)) == "cpu":
        reuse_freed_tensor_memory()
    module, function = LOADERS[run.kind].split(":")
    return getattr(importlib.import_module(module), function)(run, device)


def predict(args: PredictArguments) -> Path | None:
    """Score ``args.input`` with the run in ``args.run_dir`` and write ``args.output``; returns its path on the
    main process (None on the others). The output, the run and the input are checked before any model loads."""
    from accelerate import PartialState

    from ftpeft.features.extract import batched, distributed_map
    from ftpeft.predict.inputs import read_inputs
    from ftpeft.predict.runs import detect_run
    from ftpeft.predict.writer import check_output, prediction_columns, skipped_list_path, write_predictions

    # CPU ranks (set by parse_args when launched without a GPU) must be asked for, or each rank runs alone
    state = PartialState(cpu=os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in ("1", "true", "yes"))
    check_output(args.output, args.overwrite)
    if args.backend == "onnx":
        from ftpeft.export.predictor import find_export, load_onnx_predictor

        export = find_export(args.run_dir)
        modality, source = export.modality, f"ONNX export {export.model_file}"
    else:
        run = detect_run(args.run_dir)
        modality, source = input_modality(run), f"{run.kind} model {run.model_dir}"
    with state.main_process_first():  # the main process fills the datasets cache, the others read it
        inputs = read_inputs(args.input, modality, args.id_column, args.strict_images)
        predictor = load_onnx_predictor(export) if args.backend == "onnx" else load_predictor(run, state.device)
        target = getattr(predictor, "target", None)
        prediction_columns(args.id_column, predictor.label_names, target)  # a clash of names is refused before work
        predictor.prepare(inputs, args.text_columns)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(inputs),
        desc="predicting",
        unit="row",
        disable=not state.is_main_process or len(inputs) <= args.batch_size,
    )

    def score(indices: list[int]) -> np.ndarray:
        parts = []
        for batch in batched(indices, args.batch_size):
            parts.append(predictor.probabilities(batch))
            bar.update(min(len(batch) * state.num_processes, bar.total - bar.n))
        return np.concatenate(parts) if parts else np.zeros((0, len(predictor.label_names)))

    probabilities = distributed_map(len(inputs), score, "predicting")  # rank order = row order
    bar.close()
    if not state.is_main_process:
        state.wait_for_everyone()
        return None
    written = write_predictions(args.output, args.id_column, inputs.ids, predictor.label_names, probabilities, target)
    skipped = getattr(inputs, "skipped", [])
    if skipped:
        from ftpeft.core.outputs import atomic_write_text

        listed = skipped_list_path(args.output)
        atomic_write_text(listed, "\n".join(skipped) + "\n")
        print(f"warning: {len(skipped)} unreadable image(s) skipped, listed in {listed}", file=sys.stderr)
    print(f"wrote {len(inputs)} predictions ({source}) to {written}")
    state.wait_for_everyone()
    return written


def main(argv: list[str]) -> Path | None:
    return predict(parse_predict_args(argv))
