"""Inference throughput on CPU: the stock loaders against `ftpeft predict` (torch) and its ONNX export, fp32 and int8.

    python recipes/bert_cls.py --output_dir outputs/inference_demo --num_train_epochs 1    # the text model (~15 min)
    python recipes/image_cls.py --output_dir outputs/inference_mnist --num_train_epochs 1  # the MNIST model (~8 min)
    python benchmarks/inference.py            # ~30 min on 2 shared cores; writes benchmarks/results/inference.{md,json}
    python benchmarks/inference.py --rows 64 --rounds 1 --results_dir /tmp/smoke     # a smoke run

Rows: the demo's 1,000 test tweets and the image demo's 1,000 MNIST test digits (PNG files, as `ftpeft predict`
reads a folder), scored at batch 1 and 32, on one thread and on every core. The backends:

- stock: transformers ``pipeline("text-classification")`` (top_k=None, truncation at the run's length, batch_size);
  for the timm model, whose folder ``pipeline()`` does not load (transformers' TimmWrapper takes num_classes twice),
  the plain timm loop of its model card (``timm.create_model("local-dir:...")`` + its eval transform);
- ftpeft predict (torch): the predictor ``ftpeft predict`` builds (encode as in training, per-batch padding);
- ONNX fp32 and ONNX int8: ``ftpeft export`` (+ ``--quantize int8``) and the ``--backend onnx`` predictor.

A pass scores every row from memory (texts or image files -> probabilities): model loading and CSV writing are
left out, tokenisation and image decoding are in. Each backend runs in its own worker process that loads its model
once; peak RSS is that process's (after all passes). Within a setting (data, threads, batch) the backends take turns
in rounds, the order rotated each round (A B C D, B C D A, ...), so a slow spell of the shared machine hits each alike;
a backend's figure is its median rows/s, a ratio is the median of the per-round ratios to the stock loader.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run_benchmarks import machine_description

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TEXT_RUN, IMAGE_RUN = ROOT / "outputs" / "inference_demo", ROOT / "outputs" / "inference_mnist"
TEXT_TRAIN = "python recipes/bert_cls.py --output_dir outputs/inference_demo --num_train_epochs 1"
IMAGE_TRAIN = "python recipes/image_cls.py --output_dir outputs/inference_mnist --num_train_epochs 1"
BACKENDS = ("stock", "ftpeft", "onnx_fp32", "onnx_int8")
NAMES = {"stock": "stock", "ftpeft": "ftpeft predict (torch)", "onnx_fp32": "ONNX fp32", "onnx_int8": "ONNX int8"}
STOCK_NAMES = {"tweets": "transformers pipeline()", "mnist": "timm create_model + transform (card snippet)"}
BATCHES = (1, 32)
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")  # fmt: skip
GOAL_FTPEFT, GOAL_INT8, GOAL_ACCURACY_POINTS = 0.95, 2.0, 0.5


# --- the data ------------------------------------------------------------------------------------------------------


def write_tweets(folder: Path, rows: int) -> Path:
    """The demo's test tweets (the bare demo's classes and split) as JSON lines: text, label (a CSV would need care:
    some tweets hold carriage returns)."""
    from ftpeft.text.args import TextDataArguments
    from ftpeft.text.demo import demo_tweets

    defaults = TextDataArguments()
    test = demo_tweets(defaults.demo_classes, defaults.demo_train_samples, defaults.demo_test_samples)["test"]
    path = folder / "tweets.jsonl"
    test.select(range(min(rows, len(test)))).to_pandas()[["text", "label"]].to_json(path, orient="records", lines=True)
    return path


def write_digits(folder: Path, rows: int) -> Path:
    """The image demo's 1,000 MNIST test digits as PNG files in one folder + digits.jsonl (file, label)."""
    import pandas as pd

    from ftpeft.vision.args import ImageDataArguments
    from ftpeft.vision.data import demo_mnist

    defaults = ImageDataArguments()
    test = demo_mnist(defaults.demo_train_samples, defaults.demo_test_samples)[0]["test"]
    images = folder / "digits"
    images.mkdir()
    files = []
    for i in range(min(rows, len(test))):
        path = images / f"{i:04d}.png"
        test.image(i).save(path)
        files.append({"file": str(path), "label": str(test.labels[i])})
    pd.DataFrame(files).to_json(folder / "digits.jsonl", orient="records", lines=True)
    return folder / "digits.jsonl"


def write_calibration_digits(folder: Path, rows: int = 256) -> Path:
    """The first ``rows`` training digits of the image demo as PNG files: what its static int8 is calibrated on."""
    from ftpeft.vision.args import ImageDataArguments
    from ftpeft.vision.data import demo_mnist

    defaults = ImageDataArguments()
    train = demo_mnist(defaults.demo_train_samples, defaults.demo_test_samples)[0]["train"]
    folder.mkdir()
    for i in range(min(rows, len(train))):
        train.image(i).save(folder / f"{i:04d}.png")
    return folder


def ensure_exports(run_dir: Path, calibration: Path | None = None) -> dict[str, Path]:
    """RUN/onnx (fp32) and RUN/onnx-int8 (static, calibrated on ``calibration``'s images when given), exported unless
    a current export is there."""
    from ftpeft.core.errors import FtpeftError
    from ftpeft.export.onnx import export_onnx
    from ftpeft.export.predictor import find_export

    folders = {"onnx_fp32": run_dir / "onnx", "onnx_int8": run_dir / "onnx-int8"}
    for backend, folder in folders.items():
        quantize = "int8" if backend == "onnx_int8" else "none"
        try:
            info = find_export(folder).info
            calibrated = bool(info.get("calibration")) == (calibration is not None and quantize == "int8")
            current = info.get("quantize") == quantize and calibrated
        except FtpeftError:
            current = False
        if not current:
            calibration_data = calibration if quantize == "int8" else None
            print(export_onnx(run_dir, folder, quantize, True, calibration_data).line(), flush=True)
    return folders


# --- a worker: one backend, one thread count, its model loaded once -----------------------------------------------


class Scorer:
    """One backend over one data set: ``score(batch)`` -> probabilities of every row, in row order."""

    def __init__(self, backend: str, dataset: str, run_dir: Path, data: Path, threads: int):
        import pandas as pd
        import torch

        torch.set_num_threads(threads)
        self.backend, self.dataset, self.threads = backend, dataset, threads
        self.frame = pd.read_json(data, orient="records", lines=True, dtype=False).astype(str)
        if backend == "stock":
            self.stock = self._stock(run_dir)
            return
        if backend == "ftpeft":
            from ftpeft.predict.job import load_predictor
            from ftpeft.predict.runs import detect_run

            self.predictor = load_predictor(detect_run(run_dir), torch.device("cpu"))
        else:
            from ftpeft.export.predictor import find_export, load_onnx_predictor

            folder = run_dir / ("onnx" if backend == "onnx_fp32" else "onnx-int8")
            self.predictor = load_onnx_predictor(find_export(folder), threads)
        self.label_names = list(self.predictor.label_names)

    def _stock(self, run_dir: Path):
        if self.dataset == "tweets":
            from transformers import pipeline

            from ftpeft.predict.runs import detect_run
            from ftpeft.predict.text import max_seq_length

            classifier = pipeline("text-classification", model=str(run_dir), device="cpu")
            self.label_names = [classifier.model.config.id2label[i] for i in range(classifier.model.config.num_labels)]
            self.max_length = max_seq_length(detect_run(run_dir))
            return classifier
        import timm
        from timm.data import create_transform, resolve_data_config

        model = timm.create_model(f"local-dir:{run_dir}", pretrained=True).eval()
        self.label_names = [str(n) for n in model.pretrained_cfg["label_names"]]
        return model, create_transform(**resolve_data_config({}, model=model), is_training=False)

    def score(self, batch: int, rows: int):
        """Probabilities of the first ``rows`` rows, ``batch`` at a time."""
        import numpy as np

        frame = self.frame.iloc[:rows]
        if self.backend == "stock":
            return self._score_stock(frame, batch)
        from datasets import Dataset

        from ftpeft.predict.inputs import ImageInput, TableInput

        if self.dataset == "tweets":
            rows = Dataset.from_pandas(frame[["text"]], preserve_index=False)
            inputs = TableInput(Path("tweets.csv"), rows, [str(i) for i in range(len(rows))])
        else:
            files = list(frame["file"])
            inputs = ImageInput(Path("digits"), files, [str(i) for i in range(len(files))], [])
        self.predictor.prepare(inputs, None)
        indices = list(range(len(inputs)))
        return np.concatenate(
            [self.predictor.probabilities(indices[i : i + batch]) for i in range(0, len(indices), batch)]
        )

    def _score_stock(self, frame, batch: int):
        import numpy as np
        import torch

        if self.dataset == "tweets":
            texts = list(frame["text"])
            outputs = self.stock(texts, batch_size=batch, top_k=None, truncation=True, max_length=self.max_length)
            return np.array(
                [[{o["label"]: o["score"] for o in row}[name] for name in self.label_names] for row in outputs]
            )
        from PIL import Image

        model, transform = self.stock
        files, parts = list(frame["file"]), []
        with torch.no_grad():
            for i in range(0, len(files), batch):
                pixels = torch.stack([transform(Image.open(f).convert("RGB")) for f in files[i : i + batch]])
                parts.append(model(pixels).softmax(-1).numpy())
        return np.concatenate(parts)

    def accuracy(self, scores) -> float:
        predicted = [self.label_names[i] for i in scores.argmax(axis=1)]
        return sum(p == t for p, t in zip(predicted, self.frame["label"])) / len(predicted)  # zip: the rows scored


def peak_rss_mib() -> float:
    """This process's peak resident memory: VmHWM (ru_maxrss would carry the driver's peak over the fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(spec: dict) -> None:
    """Load, say READY, then one pass per 'batch N rows M' line on stdin; 'quit' reports the peak RSS."""
    started = time.perf_counter()
    scorer = Scorer(spec["backend"], spec["dataset"], Path(spec["run_dir"]), Path(spec["data"]), spec["threads"])
    print("READY " + json.dumps({"load_seconds": time.perf_counter() - started}), flush=True)
    for line in sys.stdin:
        command = line.split()
        if command[0] == "quit":
            break
        began = time.perf_counter()
        scores = scorer.score(int(command[1]), int(command[3]))
        seconds = time.perf_counter() - began
        result = {"rows": len(scores), "rows_per_s": len(scores) / seconds, "seconds": seconds}
        result["accuracy"] = scorer.accuracy(scores)
        print("RESULT " + json.dumps(result), flush=True)
    print("PEAK " + json.dumps({"peak_rss_mib": peak_rss_mib()}), flush=True)


class Worker:
    """The driver's handle on a worker process."""

    def __init__(self, spec: dict, env: dict):
        self.spec = spec
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        )  # fmt: skip

    def read(self, tag: str) -> dict:
        for line in self.process.stdout:
            if line.startswith(tag + " "):
                return json.loads(line[len(tag) + 1 :])
        raise RuntimeError(f"worker {self.spec} ended without {tag} (exit {self.process.wait()})")

    def run(self, batch: int, rows: int) -> dict:
        self.process.stdin.write(f"batch {batch} rows {rows}\n")
        self.process.stdin.flush()
        return self.read("RESULT")

    def close(self) -> float:
        self.process.stdin.write("quit\n")
        self.process.stdin.flush()
        peak = self.read("PEAK")["peak_rss_mib"]
        self.process.wait()
        return peak


# --- the driver ----------------------------------------------------------------------------------------------------


def cpu_description() -> dict:
    """The CPU's model and the vector extensions int8 speed depends on (from /proc/cpuinfo's flags)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "vector_extensions": [flag for flag in VECTOR_FLAGS if flag in flags]}


def measure(dataset: str, run_dir: Path, data: Path, threads: int, args, env: dict) -> list[dict]:
    """Every backend at every batch size on ``threads`` threads, in rotated rounds; one row per pass. Each round has
    its own worker processes: the same loop runs up to 25% faster or slower from one process to the next (measured
    with the plain timm loop alone), so a backend's median is over processes, not over passes of one."""
    env = dict(env, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    spec = {"dataset": dataset, "run_dir": str(run_dir), "data": str(data), "threads": threads}
    rows, peaks = [], {backend: 0.0 for backend in BACKENDS}
    for round_index in range(args.rounds):
        workers = {}
        try:
            for backend in BACKENDS:  # loaded one after another: a loading worker does not slow a measured one
                workers[backend] = Worker({**spec, "backend": backend}, env)
                workers[backend].read("READY")
            order = BACKENDS[round_index % len(BACKENDS) :] + BACKENDS[: round_index % len(BACKENDS)]
            for batch in BATCHES:
                rows_scored = args.rows_at_batch_1 if batch == 1 else args.rows
                for backend in order:
                    result = workers[backend].run(batch, rows_scored)
                    rows.append({"dataset": dataset, "threads": threads, "batch": batch, "round": round_index,
                                 "backend": backend, **result, "load": round(os.getloadavg()[0], 2)})  # fmt: skip
                    print(f"{dataset} threads {threads} batch {batch} round {round_index} {backend}: "
                          f"{result['rows_per_s']:.1f} rows/s (load {rows[-1]['load']})", flush=True)  # fmt: skip
        finally:
            for backend, worker in workers.items():
                peaks[backend] = max(peaks[backend], worker.close())
    for row in rows:
        row["peak_rss_mib"] = round(peaks[row["backend"]], 1)
    return rows


def round_ratios(passes: list[dict], dataset: str, threads: int, batch: int, backend: str) -> list[float]:
    """Each round's rows/s of ``backend`` over the stock loader's in the same round (one setting)."""
    same = [p for p in passes if (p["dataset"], p["threads"], p["batch"]) == (dataset, threads, batch)]
    stock = {p["round"]: p["rows_per_s"] for p in same if p["backend"] == "stock"}
    return [p["rows_per_s"] / stock[p["round"]] for p in same if p["backend"] == backend]


def summarise(rows: list[dict]) -> list[dict]:
    """Per (dataset, threads, batch, backend): median rows/s and the median per-round ratio to the stock loader."""
    summary = []
    settings = sorted({(r["dataset"], r["threads"], r["batch"]) for r in rows}, key=lambda s: (s[0] != "tweets", s))
    for dataset, threads, batch in settings:
        passes = [r for r in rows if (r["dataset"], r["threads"], r["batch"]) == (dataset, threads, batch)]
        for backend in BACKENDS:
            mine = [r for r in passes if r["backend"] == backend]
            summary.append(
                {
                    "dataset": dataset, "threads": threads, "batch": batch, "backend": backend,
                    "rows_per_s": statistics.median(r["rows_per_s"] for r in mine),
                    "ratio_to_stock": statistics.median(round_ratios(passes, dataset, threads, batch, backend)),
                    "rounds": len(mine), "rows": mine[0]["rows"], "accuracy": mine[0]["accuracy"],
                    "peak_rss_mib": mine[0]["peak_rss_mib"],
                }
            )  # fmt: skip
    return summary


def goals(summary: list[dict]) -> list[dict]:
    """The issue's goals, each with its figure and met / not met."""

    def pick(dataset, backend, **where):
        return [s for s in summary if s["dataset"] == dataset and s["backend"] == backend
                and all(s[k] == v for k, v in where.items())]  # fmt: skip

    checks = []
    for dataset in sorted({s["dataset"] for s in summary}, key=lambda d: d != "tweets"):
        for threads in sorted({s["threads"] for s in summary}):
            ftpeft = pick(dataset, "ftpeft", threads=threads)
            checks.append({
                "goal": f"{dataset}, {threads} thread(s): ftpeft predict >= {GOAL_FTPEFT}x the stock loader "
                        "(batch 1 and 32)",
                "figure": " / ".join(f"{s['ratio_to_stock']:.2f}x" for s in ftpeft) + " (batch 1 / 32)",
                "met": all(s["ratio_to_stock"] >= GOAL_FTPEFT for s in ftpeft),
            })  # fmt: skip
            (int8,) = pick(dataset, "onnx_int8", batch=32, threads=threads)
            (fp32,) = pick(dataset, "onnx_fp32", batch=32, threads=threads)
            points = 100 * abs(int8["accuracy"] - fp32["accuracy"])
            checks.append({
                "goal": f"{dataset}, {threads} thread(s): ONNX int8 >= {GOAL_INT8}x the stock loader at batch 32, "
                        f"test accuracy within {GOAL_ACCURACY_POINTS} points of fp32",
                "figure": f"{int8['ratio_to_stock']:.2f}x; accuracy {int8['accuracy']:.3f} vs fp32 "
                          f"{fp32['accuracy']:.3f} ({points:.1f} points)",
                "met": int8["ratio_to_stock"] >= GOAL_INT8 and points <= GOAL_ACCURACY_POINTS,
            })  # fmt: skip
    return checks


def notes(meta: dict, all_threads: int) -> list[str]:
    """What a reader needs beside the table."""
    return [
        (
            f"Batch-1 passes score the first {meta['rows_at_batch_1']} rows (rows/s is per row), batch-32 passes all "
            f"{max(meta['rows'].values()):,}; the accuracy of a batch-32 row is the test accuracy."
        ),
        (
            "MNIST's stock loader is the timm snippet of the run's card, batched: transformers' pipeline() does not load "
            "a folder timm saved (its TimmWrapper gets num_classes twice)."
        ),
        (
            f"All threads = {all_threads} threads on {all_threads} cores; while other jobs hold a core (the load above), "
            "torch's thread pool waits at every op for a thread the scheduler has parked, so its multi-thread passes "
            "can run several times slower than its 1-thread ones (and vary a lot); ONNX Runtime's threads degrade far "
            "less. The 1-thread rows give the backends' own speed."
        ),
        (
            "int8: for the text model, ONNX Runtime's dynamic quantisation of MatMul, Gemm and Gather (embeddings); for "
            "the conv net, static quantisation of every layer (QDQ, per-channel int8 weights, uint8 activations) "
            "calibrated on 256 training digits (`ftpeft export --quantize int8 --calibration_data DIR`): dynamic "
            "quantisation leaves convolutions in fp32 (a dynamic ConvInteger export ran 6x slower and lost accuracy)."
        ),
        (
            "Peak RSS is about 1 GB for every backend: each worker imports torch, transformers and datasets (ftpeft "
            "predict's path does, ONNX included); the ONNX session itself adds little."
        ),
        (
            "The same loop runs at different speeds in different processes: the plain timm loop alone (MNIST, batch 32, "
            "1 thread, 640 digits) gave 270-297 rows/s in fresh processes that imported nothing else first and 357-383 "
            "in processes that had imported datasets first (2026-12-06, idle cores, 2 processes each). So every round "
            "starts fresh workers, and a backend's median is over processes; a gap that stays is a property of the "
            "process (what it imported), not of the predictor's loop, which matched the plain loop pass for pass when "
            "both ran in one process (342 vs 344, 375 vs 379 rows/s)."
        ),
        (
            "ftpeft predict scores under torch.inference_mode, as pipeline() does; it tokenises through datasets.map in "
            "memory under a fresh fingerprint (hashing the tokenizer for one took about 0.1 s a call, which showed at "
            "batch 1); images are normalised once per batch (ftpeft.vision.data.pixel_batch)."
        ),
    ]


def write_results(folder: Path, rows, summary, checks, meta: dict) -> None:
    """inference.json (the shared results schema + every pass) and inference.md (the table and the goals)."""
    figures = {s["dataset"]: {} for s in summary}
    for s in summary:
        key = f"{s['backend']}_b{s['batch']}_t{s['threads']}"
        figures[s["dataset"]][f"{key}_rows_per_s"] = round(s["rows_per_s"], 1)
        figures[s["dataset"]][f"{key}_x_stock"] = round(s["ratio_to_stock"], 3)
    for s in summary:
        figures[s["dataset"]][f"{s['backend']}_peak_rss_mib"] = s["peak_rss_mib"]
        figures[s["dataset"]][f"{s['backend']}_test_accuracy"] = round(s["accuracy"], 4)
    all_threads = max(s["threads"] for s in summary)
    results = []
    for dataset, recipe, size in (
        ("tweets", "bert_cls", "demo test tweets"),
        ("mnist", "image_cls", "MNIST test digits"),
    ):
        if dataset not in figures:
            continue
        headline = "onnx_int8_b32_t1_x_stock"  # one thread: the backends' own speed (see the notes)
        results.append({
            "setting": {"recipe": recipe, "tuning": f"inference on CPU: ONNX int8 against {STOCK_NAMES[dataset]}",
                        "data": "demo", "size": f"{meta['rows'][dataset]:,} {size}", "epochs": "1 (the model scored)",
                        "seeds": "42"},
            "date": meta["date"], "machine": meta["machine"], "load": meta["load"], "command": meta["command"],
            "figures": figures[dataset], "headline": headline, "in_readme": False,
            "note": f"batch 32, 1 thread; rows/s ratio, median of {meta['rounds']} rotated rounds",
        })  # fmt: skip
    document = {"results": results, "meta": meta, "goals": checks, "summary": summary, "passes": rows}
    (folder / "inference.json").write_text(json.dumps(document, indent=2) + "\n")

    lines = [
        "# Inference on CPU: stock loaders, `ftpeft predict` and its ONNX export",
        "",
        f"Command: `{meta['command']}`. {meta['date']}; {meta['machine']}.",
        f"CPU: {meta['cpu']['model']}; vector extensions: {', '.join(meta['cpu']['vector_extensions']) or 'none'}.",
        (
            f"Load (1/5/15-min averages): {meta['load']}. The passes themselves load the machine about 1 at one thread "
            "and 2 at two; more is other jobs. Read ratios, which pair passes of the same round, before absolute rows/s."
        ),
        "",
        "Models: " + "; ".join(meta["models"].values()),
        "",
        (
            "A pass scores every row from memory (texts / PNG files -> probabilities; tokenising and decoding included, "
            f"loading and CSV writing left out). Median of {meta['rounds']} rounds per setting, the backends' order rotated "
            "each round; x stock = the median per-round ratio. Peak RSS: the backend's worker process."
        ),
        "",
        "| data | threads | batch | backend | rows/s | x stock | rows scored | test accuracy | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        name = STOCK_NAMES[s["dataset"]] if s["backend"] == "stock" else NAMES[s["backend"]]
        lines.append(
            f"| {s['dataset']} | {s['threads']} | {s['batch']} | {name} | {s['rows_per_s']:.1f} | "
            f"{s['ratio_to_stock']:.2f}x | {s['rows']} | {s['accuracy']:.3f} | {s['peak_rss_mib']:.0f} |"
        )
    lines += ["", "## Goals", "", "| goal | figure | met |", "|---|---|---|"]
    lines += [f"| {c['goal']} | {c['figure']} | {'met' if c['met'] else 'not met'} |" for c in checks]
    lines += ["", "## Reading it", ""] + [f"- {note}" for note in notes(meta, all_threads)]
    (folder / "inference.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text_run", type=Path, default=TEXT_RUN, help=f"A bert_cls run ({TEXT_TRAIN}).")
    parser.add_argument("--image_run", type=Path, default=IMAGE_RUN, help=f"An image_cls run ({IMAGE_TRAIN}).")
    parser.add_argument("--rows", type=int, default=1000, help="Rows of each data set (default: all 1,000).")
    parser.add_argument(
        "--rows_at_batch_1", type=int, default=1000, help="Rows a batch-1 pass scores (the first N; rows/s is per row)."
    )
    parser.add_argument("--rounds", type=int, default=3, help="Rotated rounds per setting (median over them).")
    parser.add_argument("--datasets", nargs="+", default=["tweets", "mnist"], choices=("tweets", "mnist"))
    parser.add_argument("--results_dir", type=Path, default=RESULTS)
    parser.add_argument("--rewrite", action="store_true", help="Rewrite the .md/.json from inference.json's passes.")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return Path()
    if args.rewrite:  # the table and goals again from the passes of inference.json (after a change of this code)
        document = json.loads((args.results_dir / "inference.json").read_text())
        summary = summarise(document["passes"])
        write_results(args.results_dir, document["passes"], summary, goals(summary), document["meta"])
        return args.results_dir / "inference.md"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TQDM_DISABLE="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    runs = {"tweets": args.text_run, "mnist": args.image_run}
    for dataset in args.datasets:
        if not (runs[dataset] / "config.json").is_file():
            raise SystemExit(
                f"{runs[dataset]}: no trained model; train it first: {TEXT_TRAIN if dataset == 'tweets' else IMAGE_TRAIN}"
            )
    load_start = os.getloadavg()
    rows, meta_rows = [], {}
    with tempfile.TemporaryDirectory(prefix="ftpeft-inference-") as workdir:
        for dataset in args.datasets:
            calibration = write_calibration_digits(Path(workdir) / "calibration") if dataset == "mnist" else None
            ensure_exports(runs[dataset], calibration)
            data = (write_tweets if dataset == "tweets" else write_digits)(Path(workdir), args.rows)
            meta_rows[dataset] = min(args.rows, 1000)
            for threads in sorted({1, os.cpu_count() or 1}):
                rows += measure(dataset, runs[dataset], data, threads, args, env)
    load_end = os.getloadavg()
    summary = summarise(rows)
    checks = goals(summary)
    import onnxruntime

    command = "python benchmarks/inference.py" + ("" if argv is None else " " + " ".join(argv))
    if argv is None and len(sys.argv) > 1:
        command = "python benchmarks/inference.py " + " ".join(sys.argv[1:])
    during = statistics.median(r["load"] for r in rows)
    models = {d: f"{d}: {runs[d]} ({TEXT_TRAIN if d == 'tweets' else IMAGE_TRAIN})" for d in args.datasets}
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(f"onnxruntime {onnxruntime.__version__}"),
        "load": f"start {load_start[0]:.1f}/{load_start[1]:.1f}/{load_start[2]:.1f}, end {load_end[0]:.1f}/"
                f"{load_end[1]:.1f}/{load_end[2]:.1f}, median 1-min during passes {during:.1f} "
                f"(on {os.cpu_count()} cores)",
        "command": command, "rounds": args.rounds, "rows": meta_rows, "rows_at_batch_1": args.rows_at_batch_1,
        "cpu": cpu_description(), "models": models,
    }  # fmt: skip
    args.results_dir.mkdir(parents=True, exist_ok=True)
    write_results(args.results_dir, rows, summary, checks, meta)
    return args.results_dir / "inference.md"


if __name__ == "__main__":
    main()
