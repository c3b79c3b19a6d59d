"""ftpeft against a plain hand-written Trainer, in one run on one machine, as ratios.

    python benchmarks/run_benchmarks.py            # full suite (~15 min on 2 CPU cores)
    python benchmarks/run_benchmarks.py --quick    # smoke run: a tiny model, a few steps (the test uses it)

Every case runs in its own process (peak RSS is per case) on the offline demo data, and writes
metrics.json; this script collects train samples/s, wall time, peak RSS, trainable parameters and test
accuracy into benchmarks/results/benchmark.md + benchmark.png + benchmark.json, and prints each case's
ratio to the baseline. It also measures a plain fp32 ``torch.matmul`` in the same run, to say how close
a full fine-tuning step gets to what this machine can do.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# Trainer's default batch size, as in a hand-written run_glue-style script (the brief's reference figures)
BATCH_SIZE = "8"
PLAIN_TRAINER_LRS = ["--learning_rate", "5e-5", "--head_lr", "5e-5", "--layer_decay", "1"]


def text_lr_defaults_phrase() -> str:
    """The text recipes' LR defaults in words, read from the library so a table never states stale ones."""
    from ftpeft.text.job import TEXT_LR_DEFAULTS as lrs

    def short(value: float) -> str:
        mantissa, exponent = f"{value:.6e}".split("e")  # 1e-3 / 2.5e-4, as the README writes LRs; nothing rounded
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"

    return f"LR {short(lrs['learning_rate'])} top, layer decay {lrs['layer_decay']:g}, head {short(lrs['head_lr'])}"


@dataclasses.dataclass
class Case:
    name: str
    script: str  # file under ROOT
    args: list[str]
    epochs: int = 1
    group: str = "text"  # ratios are to the first case of the group


def text_cases(quick: bool) -> list[Case]:
    bert = "recipes/bert_cls.py"
    two = ["--num_train_epochs", "2"]
    cases = [
        Case("plain Trainer, full FT (baseline)", "benchmarks/plain_trainer.py", []),
        # the baseline's hyperparameters (one LR 5e-5, no decay), so only the code differs
        Case("ftpeft, full FT, same config", bert, ["--unfreeze_last", "all", *PLAIN_TRAINER_LRS]),
        Case("ftpeft --unfreeze-last all (defaults)", bert, ["--unfreeze_last", "all"]),
        Case("ftpeft --unfreeze-last 4", bert, ["--unfreeze_last", "4"]),
        Case("ftpeft --unfreeze-last 2", bert, ["--unfreeze_last", "2"]),
        Case("ftpeft --unfreeze-last 0 (head)", bert, ["--unfreeze_last", "0"]),
        Case("ftpeft LoRA r=8", bert, ["--use_peft", "--lora_r", "8"]),
        Case("ftpeft --unfreeze-last 2, 2 epochs", bert, ["--unfreeze_last", "2", *two], 2),
        Case(
            "ftpeft --unfreeze-last 2 --cache_frozen, 2 epochs",
            bert,
            ["--unfreeze_last", "2", "--cache_frozen", *two],
            2,
        ),
        Case("ftpeft --unfreeze-last 0, 2 epochs", bert, ["--unfreeze_last", "0", *two], 2),
        Case(
            "ftpeft --unfreeze-last 0 --cache_frozen, 2 epochs",
            bert,
            ["--unfreeze_last", "0", "--cache_frozen", *two],
            2,
        ),
    ]
    if quick:
        keep = {0, 1, 4, 8}
        cases = [c for i, c in enumerate(cases) if i in keep]
    return cases


def image_cases(quick: bool) -> list[Case]:
    image = "recipes/image_cls.py"
    one = ["--num_train_epochs", "1"]
    cases = [
        Case("image full FT (EfficientNet-Lite0, MNIST 64 px)", image, ["--unfreeze_last", "all", *one], group="image"),
        Case("image --unfreeze-last 2 (last 2 stages)", image, ["--unfreeze_last", "2", *one], group="image"),
        Case("image --unfreeze-last 0 (head)", image, ["--unfreeze_last", "0", *one], group="image"),
        Case("image head on cached features (extract + logreg)", "recipes/train_head.py", [], group="image"),
    ]
    return cases[2:3] if quick else cases


def image_argv(case: Case, output_dir: Path, quick: bool) -> list[list[str]]:
    """The command line(s) of an image case; the cached-feature case is extraction, then the head."""
    demo = ["--demo_train_samples", "200" if quick else "4000", "--demo_test_samples", "100" if quick else "1000"]
    tiny = ["--model_name_or_path", "test_resnet", "--image_size", "32", "--max_steps", "2"] if quick else []
    if case.script.endswith("train_head.py"):
        features = output_dir.with_name(output_dir.name + "_features")
        return [
            [str(ROOT / "recipes/extract_features.py"), "--config", str(ROOT / "recipes/configs/features/mnist_lite0.yaml"),
             "--feature_dir", str(features), *demo],
            [str(ROOT / "recipes/train_head.py"), "--features_dir", str(features), "--head", "logreg",
             "--output_dir", str(output_dir)],
        ]  # fmt: skip
    return [[str(ROOT / case.script), *case.args, "--output_dir", str(output_dir), "--overwrite_output_dir",
             "--eval_strategy", "no", "--save_strategy", "no", *demo, *tiny]]  # fmt: skip


def case_argv(case: Case, output_dir: Path, cache_dir: Path, quick: bool, model: str | None) -> list[str]:
    if case.script.endswith("plain_trainer.py"):
        argv = ["--model", model or _default_model(), "--output_dir", str(output_dir), "--batch_size", BATCH_SIZE,
                "--train_samples", "64" if quick else "2000", "--test_samples", "32" if quick else "1000"]  # fmt: skip
        return argv + case.args + (["--max_steps", "2"] if quick else [])
    # one epoch unless the case says otherwise: what these figures measured (the recipes' default is auto now)
    argv = ["--num_train_epochs", "1", *case.args, "--output_dir", str(output_dir), "--overwrite_output_dir",
            "--eval_strategy", "no", "--save_strategy", "no", "--activation_cache_dir", str(cache_dir),
            "--demo_train_samples", "64" if quick else "2000", "--demo_test_samples", "32" if quick else "1000",
            "--per_device_train_batch_size", BATCH_SIZE]  # fmt: skip
    if model:
        argv += ["--model_name_or_path", model]
    return argv


def _default_model() -> str:
    from ftpeft.text.modeling import default_text_model_path

    return default_text_model_path()


def run_case(case: Case, workdir: Path, quick: bool, model: str | None, env: dict) -> dict:
    output_dir = workdir / "".join(c if c.isalnum() else "_" for c in case.name)
    if case.group == "image":
        commands = image_argv(case, output_dir, quick)
    else:
        commands = [[str(ROOT / case.script), *case_argv(case, output_dir, workdir / "cache", quick, model)]]
    start = time.perf_counter()
    for argv in commands:
        result = subprocess.run(
            check=False, args=[sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise SystemExit(f"benchmark case '{case.name}' failed:\n{result.stderr[-3000:]}")
    wall = time.perf_counter() - start
    metrics = json.loads((output_dir / "metrics.json").read_text())
    if "train_samples_per_second" not in metrics:  # a scikit-learn head: samples of the split over its fit time
        meta = next(output_dir.with_name(output_dir.name + "_features").glob("*/metadata.json"))
        train_rows = json.loads(meta.read_text())["split_sizes"]["train"]
        metrics["train_samples_per_second"] = train_rows / max(metrics["train_runtime"], 1e-9)
        metrics["train_epoch_seconds"] = [wall]
    report = output_dir / "freeze_report.json"
    # None where the case does not record it (a scikit-learn head has neither count nor Trainer RSS)
    trainable = metrics.get("trainable_params")
    if report.is_file():
        trainable = json.loads(report.read_text())["trainable_params"]
    epochs = metrics.get("train_epoch_seconds") or []
    return {
        "case": case.name,
        "trainable_params": trainable,
        "train_samples_per_second": metrics["train_samples_per_second"],
        "last_epoch_seconds": epochs[-1] if epochs else None,
        "first_epoch_seconds": epochs[0] if epochs else None,
        "train_runtime_s": metrics["train_runtime"],
        "process_wall_s": wall,
        "peak_rss_mb": metrics.get("train_peak_rss_mb"),
        "test_accuracy": metrics.get("test_accuracy"),
        "epochs": case.epochs,
        "group": case.group,
    }


def run_recipe(script: str, argv: list[str], output_dir: Path, env: dict) -> tuple[dict, int | None]:
    """Run one recipe in its own process into ``output_dir``; (metrics.json, trainable parameters). Exits on failure."""
    argv = [*argv, "--output_dir", str(output_dir), "--overwrite_output_dir", "--disable_tqdm", "true"]
    result = subprocess.run(
        [sys.executable, str(ROOT / script), *argv], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"{script} {' '.join(argv)} failed:\n{result.stderr[-3000:]}")
    metrics = json.loads((output_dir / "metrics.json").read_text())
    report = output_dir / "freeze_report.json"
    trainable = json.loads(report.read_text())["trainable_params"] if report.is_file() else None
    return metrics, trainable


def matmul_flops(size: int = 1024, repeats: int = 20) -> float:
    """fp32 FLOP/s of a plain torch.matmul on this machine, same thread count as the runs."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def training_flops_per_sample(model_path: str, max_length: int = 64, samples: int = 2000) -> tuple[float, int]:
    """~6 x non-embedding parameters x tokens per sample: the FLOPs of one full fine-tuning sample."""
    from transformers import AutoModel, AutoTokenizer

    from ftpeft.text.demo import demo_tweets

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    texts = list(demo_tweets(["negative", "positive"], samples, 1000)["train"]["text"])
    tokens = sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]) / len(texts)
    model = AutoModel.from_pretrained(model_path)
    params = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    return 6 * params * tokens, params


def write_outputs(rows: list[dict], extra: dict, quick: bool, results: Path = RESULTS) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    stem = "benchmark_quick" if quick else "benchmark"
    bases = {}
    for row in rows:
        bases.setdefault(row["group"], row["train_samples_per_second"])
    lines = [
        f"# ftpeft benchmark ({'quick smoke run' if quick else 'full'}; {extra['machine']})",
        "",
        (
            f"Command: `{extra['command']}`. Baseline: a plain hand-written Trainer (full fine-tuning). Text: packaged "
            f"MiniLM-L6, 2,000 demo tweets (10% held out), 1 epoch unless noted, batch {BATCH_SIZE}, max_seq_length 64, "
            "1,000 fixed test tweets. Image: EfficientNet-Lite0 on 4,000 MNIST digits at 64 px, 1 epoch."
        ),
        "",
        "| case | trainable params | train samples/s | ratio to group's first row | last epoch s | peak RSS MB | test acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        params = f"{row['trainable_params']:,}" if row["trainable_params"] is not None else "-"
        rss = f"{row['peak_rss_mb']:.0f}" if row["peak_rss_mb"] is not None else "-"
        last = f"{row['last_epoch_seconds']:.1f}" if row["last_epoch_seconds"] else "-"
        acc = f"{row['test_accuracy']:.4f}" if row["test_accuracy"] is not None else "-"
        lines.append(
            f"| {row['case']} | {params} | {row['train_samples_per_second']:.1f} | "
            f"{row['train_samples_per_second'] / bases[row['group']]:.2f}x | {last} | {rss} | {acc} |"
        )
    lines += ["", *[f"- {line}" for line in extra["notes"]], ""]
    (results / f"{stem}.md").write_text("\n".join(lines))
    (results / f"{stem}.json").write_text(json.dumps({"rows": rows, **extra}, indent=2))
    _chart(rows, results / f"{stem}.png")
    return results / f"{stem}.md"


def _chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    names = [r["case"] for r in rows][::-1]
    speeds = [r["train_samples_per_second"] for r in rows][::-1]
    bars = ax.barh(names, speeds, color="tab:blue")
    for bar, row in zip(bars, rows[::-1]):
        acc = row["test_accuracy"]
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" acc {acc:.3f}" if acc else "", va="center")
    ax.set_xlabel("train samples/s (whole run)")
    ax.set_title("ftpeft vs a plain Trainer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def notes(rows: list[dict], flops_per_sample: float | None, peak_flops: float) -> list[str]:
    by_name = {r["case"]: r for r in rows}
    out = []
    base, same = rows[0], by_name.get("ftpeft, full FT, same config")
    if same:
        out.append(
            f"ftpeft overhead: full FT throughput {same['train_samples_per_second'] / base['train_samples_per_second']:.3f}x "
            "the plain Trainer (target >= 0.97x)."
        )
    uncached, cached = (
        by_name.get("ftpeft --unfreeze-last 2, 2 epochs"),
        by_name.get("ftpeft --unfreeze-last 2 --cache_frozen, 2 epochs"),
    )
    if uncached and cached and uncached["last_epoch_seconds"] and cached["last_epoch_seconds"]:
        ratio = uncached["last_epoch_seconds"] / cached["last_epoch_seconds"]
        out.append(
            f"--cache_frozen, k=2 of 6 layers, epoch 2: {ratio:.2f}x the samples/s of uncached k=2 "
            "(FLOP bound (6 fwd + 2x2 bwd)/(2 fwd + 2x2 bwd) = 1.67x; target >= 1.5x)."
        )
        full_epoch = base["train_runtime_s"] / max(base["epochs"], 1)
        out.append(
            f"--cache_frozen k=2 epoch 2 vs full FT epoch (baseline): {full_epoch / cached['last_epoch_seconds']:.2f}x (target >= 2.5x)."
        )
    head, head_cached = (
        by_name.get("ftpeft --unfreeze-last 0, 2 epochs"),
        by_name.get("ftpeft --unfreeze-last 0 --cache_frozen, 2 epochs"),
    )
    if head and head_cached and head["last_epoch_seconds"] and head_cached["last_epoch_seconds"]:
        out.append(
            f"head only from the cache, epoch 2: {head['last_epoch_seconds'] / head_cached['last_epoch_seconds']:.1f}x "
            "faster per epoch than recomputing the frozen backbone (target >= 50x)."
        )
    if flops_per_sample:
        achieved = flops_per_sample * base["train_samples_per_second"]
        out.append(
            f"full FT step: ~{achieved / 1e9:.1f} GFLOP/s (6 x non-embedding params x tokens) vs plain fp32 matmul "
            f"{peak_flops / 1e9:.1f} GFLOP/s on this machine = {100 * achieved / peak_flops:.0f}% of the matmul rate."
        )
    return out


def write_results(folder: Path, name: str, lines: list[str], data) -> Path:
    """FOLDER/<name>.md (the ``lines``) and .json (``data``); prints the table and returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    (folder / f"{name}.json").write_text(json.dumps(data, indent=1))
    print(path.read_text())
    return path


def write_sweep_results(args: argparse.Namespace, name: str, rows: list[dict], write_table) -> Path:
    """RESULTS_DIR/<name>[_quick].json and .md (rendered by ``write_table(rows, command, path)``); prints the table."""
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_quick" if args.quick else name
    command = f"python benchmarks/{name}.py" + (" --quick" if args.quick else "")
    (args.results_dir / f"{stem}.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2))
    path = args.results_dir / f"{stem}.md"
    write_table(rows, command, path)
    print(path.read_text())
    return path


def machine_description(*details: str) -> str:
    """A results file's machine line: architecture, CPU cores, GPU, torch (without its build tag), then ``details``."""
    import platform

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    torch_version = torch.__version__.split("+")[0]
    return ", ".join([platform.machine(), f"{os.cpu_count()} CPU cores", gpu, f"torch {torch_version}", *details])


def parse_benchmark_args(
    doc: str, argv: list[str] | None, add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
) -> tuple[argparse.Namespace, dict]:
    """The flags every benchmark script takes (plus a script's own), and the environment its case processes run in."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Tiny smoke run (a few steps per case).")
    parser.add_argument("--model_name_or_path", default=None, help="Text model (default: the packaged MiniLM).")
    parser.add_argument("--results_dir", type=Path, default=RESULTS, help="Where the tables, chart and JSON go.")
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TQDM_DISABLE="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if not args.quick:
        env.pop("OMP_NUM_THREADS", None)  # real runs use every core, like users' runs
    return args, env


def main(argv: list[str] | None = None) -> Path:
    args, env = parse_benchmark_args(__doc__, argv)

    import torch

    peak = matmul_flops(256 if args.quick else 1024, 3 if args.quick else 20)
    rows = []
    cases = text_cases(args.quick) + image_cases(args.quick)
    with tempfile.TemporaryDirectory(prefix="ftpeft-bench-") as workdir:
        if not args.quick:  # baseline and same-config ftpeft alternate twice; the faster of each run is kept
            warm = {}
            for case in cases[:2] * 2:
                row = run_case(case, Path(workdir), args.quick, args.model_name_or_path, env)
                if row["train_samples_per_second"] > warm.get(case.name, {}).get("train_samples_per_second", 0):
                    warm[case.name] = row
            rows.extend(warm[case.name] for case in cases[:2])
            cases = cases[2:]
        for case in cases:
            print(f"running: {case.name}", flush=True)
            rows.append(run_case(case, Path(workdir), args.quick, args.model_name_or_path, env))
            # rows so far, so a failure later in a long run loses nothing
            print(json.dumps({"row": rows[-1]}), flush=True)
            row = rows[-1]
            first = next(r for r in rows if r["group"] == row["group"])
            print(f"  {row['train_samples_per_second']:.1f} samples/s "
                  f"({row['train_samples_per_second'] / first['train_samples_per_second']:.2f}x {first['case']}), "
                  f"test acc {row['test_accuracy']}", flush=True)  # fmt: skip
    flops = None if args.quick else training_flops_per_sample(args.model_name_or_path or _default_model())[0]
    extra = {
        "machine": machine_description(f"{torch.get_num_threads()} threads"),
        "command": "python benchmarks/run_benchmarks.py" + (" --quick" if args.quick else ""),
        "matmul_gflops": peak / 1e9,
    }
    extra["notes"] = notes(rows, flops, peak)
    path = write_outputs(rows, extra, args.quick, args.results_dir)
    print("\n".join(extra["notes"]))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
