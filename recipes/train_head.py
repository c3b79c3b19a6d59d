"""Train a cheap classifier on cached features (from extract_features.py): seconds on a CPU, no backbone.

    python recipes/extract_features.py && python recipes/train_head.py          # offline demo, logreg
    python recipes/train_head.py --head linear_svm --regularization_c 0.003
    python recipes/train_head.py --head mlp --epochs 50 --features_dir outputs/features/<key>
    python recipes/train_head.py --help

Features (flag):
- scikit-learn heads (--head logreg | linear_svm | random_forest | hist_gb; --regularization_c,
  --max_iter, --n_estimators), saved with skops (no pickle; loading trusts only sklearn/numpy types)
- torch heads (--head linear | mlp; --epochs, --learning_rate, --hidden_size), saved as safetensors; a
  head on one timm backbone's pre-logit features attaches back onto it (ftpeft.attach_head); a
  linear one is also written as a complete timm model (OUTPUT_DIR/timm_model)
- --features_dir: one extraction folder, or a cache root (its latest extraction)

Writes to --output_dir: head.skops or head.safetensors + head_config.json, run_args.yaml, metrics.json,
confusion_matrix.png, classification_report.md and a model card (README.md).
"""

from __future__ import annotations

from ftpeft.core.config import OutputArguments
from ftpeft.core.errors import run_cli
from ftpeft.features.args import HeadArguments

RECIPE_DEFAULTS: dict = {}  # the dataclass defaults fit the offline demo


def parse(argv: list[str] | None = None):
    from ftpeft.core.config import parse_args

    return parse_args((HeadArguments, OutputArguments), argv, RECIPE_DEFAULTS)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    # imported after parsing: --help and bad flags load no model or data code
    from ftpeft.features.jobs import train_head

    return train_head(*args, config=args.resolved)


if __name__ == "__main__":
    run_cli(main)()
