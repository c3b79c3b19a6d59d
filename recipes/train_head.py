"""Train a cheap classifier on cached features (from extract_features.py): seconds on a CPU, no backbone.

    python recipes/extract_features.py && python recipes/train_head.py          # offline demo, logreg
    python recipes/train_head.py --head linear_svm --regularization_c 0.003
    python recipes/train_head.py --head mlp --epochs 50 --features_dir outputs/features/<key>
    python recipes/train_head.py --head logreg --threshold auto   # label-set features: one-vs-rest, thresholds
    python recipes/train_head.py --head ridge                     # numeric features
    python recipes/train_head.py --help

Features (flag):
- scikit-learn heads (--head logreg | linear_svm | random_forest | hist_gb; --regularization_c,
  --max_iter, --n_estimators), saved with skops (no pickle; loading trusts only sklearn/numpy types)
- torch heads (--head linear | mlp; --epochs, --learning_rate, --hidden_size), saved as safetensors; a
  head on one timm backbone's pre-logit features attaches back onto it (ftpeft.attach_head)
- a linear head (logreg, linear_svm, ridge: the scaler folded into the weights; the torch linear head) on ONE
  backbone is also written as one complete model that loads without ftpeft: OUTPUT_DIR/transformers_model (a text
  encoder read at its --layer by --pooling, pipeline(..., trust_remote_code=True)) or OUTPUT_DIR/timm_model (a timm
  model at pre-logits); trees, MLP heads, several backbones and other layers stay ftpeft-only (the card says why)
- --features_dir: one extraction folder, or a cache root (its latest extraction)
- the features' label shape (--problem_type auto, or the same type named): label sets train each scikit-learn
  classifier one-vs-rest (C chosen on validation mAP) or a torch head with BCE (--pos_weight); thresholds per label
  on validation (--threshold, --min_threshold_positives), never on test; numbers train ridge (alpha chosen on
  validation RMSE, --regularization_alpha) or a torch head with MSE, outputs in the target's units; a head that does
  not fit the shape is refused
- metrics: accuracy/macro-F1 (classes); mAP, micro/macro/samples F1, subset accuracy and Hamming loss at the chosen
  thresholds and at 0.5 (label sets); RMSE, MAE, R², Pearson, Spearman (numbers)

Writes to --output_dir: head.skops or head.safetensors + head_config.json, target.json (+ thresholds.json for
label sets), run_args.yaml, metrics.json, classification_report.md (per class, label or target),
confusion_matrix.png (classes) or predictions_scatter.png (numbers), a model card (README.md), and for a linear head
on one backbone transformers_model/ or timm_model/.
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
