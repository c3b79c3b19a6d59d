"""The flags of ``ftpeft predict``."""

from __future__ import annotations

import dataclasses

from ftpeft.core.errors import FtpeftError
from ftpeft.core.validation import COUNT, check_fields


@dataclasses.dataclass
class PredictArguments:
    run_dir: str = dataclasses.field(
        metadata={
            "help": "The --output_dir of a finished ftpeft run (also given as the first word: ftpeft predict "
            "OUTPUT_DIR): text model, LoRA adapter (merged/ is used when there), knowledge model, timm image "
            "model, or a train_head head (its backbones are rerun on the raw inputs)."
        }
    )
    input: str = dataclasses.field(
        metadata={
            "help": "What to score: a csv/json/jsonl/parquet file of texts (with the knowledge columns a "
            "knowledge model was trained with), or a folder of images, searched recursively (a flat Kaggle test "
            "folder <id>.jpg gives the ids)."
        }
    )
    output: str = dataclasses.field(
        metadata={"help": "The CSV to write: id, label, one probability column per class (named by label)."}
    )
    overwrite: bool = dataclasses.field(default=False, metadata={"help": "Replace an existing --output."})
    batch_size: int = dataclasses.field(default=64, metadata={"help": "Rows per forward pass.", "range": COUNT})
    text_columns: list[str] | None = dataclasses.field(
        default=None,
        metadata={"help": "One or two text columns. Default: those the run was trained on, else guessed."},
    )
    id_column: str = dataclasses.field(
        default="id",
        metadata={"help": "Input column holding the ids (the output's first column). Without it: the row number."},
    )
    backend: str = dataclasses.field(
        default="torch",
        metadata={
            "help": "torch: the run's saved model. onnx: its ONNX export (from `ftpeft export OUTPUT_DIR`, in "
            "OUTPUT_DIR/onnx, or OUTPUT_DIR is the export's folder) through ONNX Runtime on CPU; the same CSV.",
            "choices": ("torch", "onnx"),
        },
    )
    strict_images: bool = dataclasses.field(
        default=False, metadata={"help": "Refuse unreadable images instead of skipping and listing them."}
    )

    def __post_init__(self):
        check_fields(self)
        if self.text_columns is not None and not 1 <= len(self.text_columns) <= 2:
            raise FtpeftError(f"--text_columns takes one or two column names, got {self.text_columns}.")
        if not self.id_column:
            raise FtpeftError("--id_column must name a column.")
