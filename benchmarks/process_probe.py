"""Does the same scoring loop run at the same speed in every process? The plain timm loop of an image run's card
(batch 32, one thread) in a fresh process, after importing nothing else, given modules, or ftpeft's predictor; with
``both`` the predictor's own loop alternates with it in that one process.

    python benchmarks/process_probe.py RUN_DIR IMAGE_DIR clean imp:datasets imp:transformers ftpeft both --repeat 2
    python benchmarks/process_probe.py RUN_DIR IMAGE_DIR clean mallopt    # with ftpeft predict's malloc setting

RUN_DIR: an image_cls output dir (benchmarks/inference.py trains one); IMAGE_DIR: PNG files (its digits). Prints one
JSON line per process: rows/s of each of 3 passes. Run it alone: it times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def probe(mode: str, run_dir: Path, image_dir: Path, rows: int) -> dict:
    import importlib

    if mode == "mallopt":  # ftpeft predict's CPU setting (ftpeft.predict.job.reuse_freed_tensor_memory), then nothing
        from ftpeft.predict.job import reuse_freed_tensor_memory

        reuse_freed_tensor_memory()
    import torch

    torch.set_num_threads(1)
    for name in mode.removeprefix("imp:").split(",") if mode.startswith("imp:") else ():
        importlib.import_module(name)
    predictor = None
    files = [str(p) for p in sorted(image_dir.glob("*.png"))][:rows]
    if mode in ("ftpeft", "both"):
        from ftpeft.predict.inputs import ImageInput
        from ftpeft.predict.job import load_predictor
        from ftpeft.predict.runs import detect_run

        predictor = load_predictor(detect_run(run_dir), torch.device("cpu"))
        predictor.prepare(ImageInput(image_dir, files, [str(i) for i in range(len(files))], []), None)
    import timm
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model(f"local-dir:{run_dir}", pretrained=True).eval()
    transform = create_transform(**resolve_data_config({}, model=model), is_training=False)

    def plain() -> None:
        with torch.no_grad():
            for i in range(0, len(files), 32):
                pixels = torch.stack([transform(Image.open(f).convert("RGB")) for f in files[i : i + 32]])
                model(pixels).softmax(-1).numpy()

    def ftpeft_loop() -> None:
        for i in range(0, len(files), 32):
            predictor.probabilities(list(range(i, min(i + 32, len(files)))))

    passes = {"plain": [], "ftpeft": []}
    for _ in range(3):
        for name, loop in (("plain", plain), ("ftpeft", ftpeft_loop if mode == "both" else None)):
            if loop is not None:
                began = time.perf_counter()
                loop()
                passes[name].append(round(len(files) / (time.perf_counter() - began)))
    return {"mode": mode, **{k: v for k, v in passes.items() if v}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("image_dir", type=Path)
    parser.add_argument("modes", nargs="+")
    parser.add_argument("--repeat", type=int, default=2, help="Processes per mode (rotated).")
    parser.add_argument("--rows", type=int, default=640)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(probe(args.modes[0], args.run_dir, args.image_dir, args.rows)), flush=True)
        return
    print(json.dumps({"load": os.getloadavg()}))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    for _ in range(args.repeat):
        for mode in args.modes:
            command = [sys.executable, __file__, str(args.run_dir), str(args.image_dir), mode, "--child"]
            result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            print(result.stdout.strip().splitlines()[-1], flush=True)
    print(json.dumps({"load": os.getloadavg()}))


if __name__ == "__main__":
    main()
