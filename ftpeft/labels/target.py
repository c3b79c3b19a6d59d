"""What a run learned about its labels, saved with every kind of output so any loader treats the outputs alike.

target.json      {problem_type, names, separator, scaling, thresholds, why}: every output dir (ftpeft predict)
thresholds.json  label sets: {label: threshold}
config.json      HF's problem_type (stock pipeline() applies a sigmoid, or nothing, by itself) and
                 label_thresholds, where the output has a config.json (transformers, merged, timm)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ftpeft.core.errors import FtpeftError

SINGLE_LABEL = "single_label_classification"
MULTI_LABEL = "multi_label_classification"
REGRESSION = "regression"
PROBLEM_TYPES = {"single_label": SINGLE_LABEL, "multi_label": MULTI_LABEL, "regression": REGRESSION}
TARGET_FILE = "target.json"
THRESHOLDS_FILE = "thresholds.json"
DEFAULT_THRESHOLD = 0.5


def problem_type_name(text: str) -> str:
    """'auto', or the short name of a problem type (HF's long names accepted); anything else is refused."""
    value = str(text).strip().lower()
    if value == "auto" or value in PROBLEM_TYPES:
        return value
    short = {long: short for short, long in PROBLEM_TYPES.items()}
    if value in short:
        return short[value]
    raise FtpeftError(f"--problem_type {text!r}: use auto, {', '.join(PROBLEM_TYPES)} (or HF's {', '.join(short)}).")


@dataclasses.dataclass(frozen=True)
class Target:
    """The labels of a run: the problem type (HF's long name), the names of its outputs (classes, labels or
    targets), and what turns outputs into predictions (thresholds) or target units (mean/std)."""

    problem_type: str = SINGLE_LABEL
    names: tuple[str, ...] = ()
    separator: str | None = None  # label sets read from delimited strings: predictions are joined with it
    mean: tuple[float, ...] | None = None  # regression: the training split's mean and sd per target
    std: tuple[float, ...] | None = None
    thresholds: tuple[float, ...] | None = None  # label sets: one per label (0.5 until chosen)
    why: str = ""  # how the problem type was decided

    @property
    def is_multi_label(self) -> bool:
        return self.problem_type == MULTI_LABEL

    @property
    def is_regression(self) -> bool:
        return self.problem_type == REGRESSION

    @property
    def is_single_label(self) -> bool:
        return self.problem_type == SINGLE_LABEL

    @property
    def short_name(self) -> str:
        return {long: short for short, long in PROBLEM_TYPES.items()}[self.problem_type]

    @property
    def num_outputs(self) -> int:
        return len(self.names)

    def decision_thresholds(self) -> tuple[float, ...]:
        """The thresholds a label set is decided at (0.5 for each label until chosen)."""
        return self.thresholds or (DEFAULT_THRESHOLD,) * len(self.names)

    def config_fields(self) -> dict[str, Any]:
        """What a transformers config gets: HF's problem_type and the label maps."""
        fields = {
            "num_labels": len(self.names),
            "id2label": dict(enumerate(self.names)),
            "label2id": {name: i for i, name in enumerate(self.names)},
        }
        if not self.is_single_label:  # unset means single-label to transformers (and to models saved before)
            fields["problem_type"] = self.problem_type
        return fields

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Target:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in fields}
        return cls(**values)


def single_label(names: list[str] | tuple[str, ...]) -> Target:
    return Target(SINGLE_LABEL, tuple(names))


def save_target(output_dir: str | Path, target: Target) -> None:
    """target.json (+ thresholds.json for label sets) in ``output_dir``, and HF's problem_type and the thresholds in
    its config.json when it has one (transformers, merged or timm models)."""
    from ftpeft.core.outputs import write_json

    output_dir = Path(output_dir)
    write_json(output_dir / TARGET_FILE, target.to_dict())
    if target.is_multi_label:
        write_json(output_dir / THRESHOLDS_FILE, dict(zip(target.names, target.decision_thresholds())))
    config_path = output_dir / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        if not target.is_single_label:
            config["problem_type"] = target.problem_type
        if target.is_multi_label:
            config["label_thresholds"] = dict(zip(target.names, target.decision_thresholds()))
        write_json(config_path, config)


def load_target(model_dir: str | Path) -> Target | None:
    """The Target saved with a run (target.json), else what its config.json says; None when neither exists."""
    model_dir = Path(model_dir)
    if (model_dir / TARGET_FILE).is_file():
        return Target.from_dict(json.loads((model_dir / TARGET_FILE).read_text()))
    if (model_dir / "config.json").is_file():
        config = json.loads((model_dir / "config.json").read_text())
        id2label = config.get("id2label") or {}
        names = tuple(id2label[k] for k in sorted(id2label, key=int)) if id2label else ()
        problem_type = config.get("problem_type") or SINGLE_LABEL
        thresholds = config.get("label_thresholds")
        return Target(problem_type, names, thresholds=tuple(thresholds[n] for n in names) if thresholds else None)
    return None
