"""``ftpeft predict OUTPUT_DIR --backend onnx``: the predictors of ``ftpeft.predict`` over an ONNX export.

Rows are encoded as the torch backend encodes them (the same text columns, truncation length, per-batch padding;
the same image transform), ONNX Runtime computes the logits, and ``model_scores`` reads them by the run's target,
so the CSV is the torch backend's to within float error. OUTPUT_DIR may be the export folder itself (it holds
everything it needs) or the run whose ``onnx/`` folder holds it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ftpeft.core.errors import FtpeftError, first_line
from ftpeft.export.onnx import EXPORT_DIR, INFO_FILE, INSTALL_HINT, weights_digest
from ftpeft.predict.inputs import ImageInput, TableInput, read_image
from ftpeft.predict.text import model_scores


@dataclasses.dataclass
class OnnxExport:
    """An export folder and its onnx_export.json."""

    folder: Path
    info: dict[str, Any]

    @property
    def modality(self) -> str:
        return self.info["modality"]

    @property
    def model_file(self) -> Path:
        return self.folder / self.info["model_file"]


def find_export(path: str | Path) -> OnnxExport:
    """The export at ``path`` (an export folder, or a run with one in onnx/), checked: whole, and made from the
    weights the run has now when it sits in its run. Nothing heavy is loaded."""
    from ftpeft.core.artifacts import read_json_file

    path = Path(path)
    if not path.is_dir():
        raise FtpeftError(f"{path}: no such directory; pass a run's --output_dir or its ONNX export folder.")
    folder = path if (path / INFO_FILE).is_file() else path / EXPORT_DIR
    if not (folder / INFO_FILE).is_file():
        raise FtpeftError(
            f"{path}: no ONNX export ({folder / INFO_FILE} is missing); run `ftpeft export {path} --format onnx` "
            "first, or pass the export's folder."
        )
    info = read_json_file(folder / INFO_FILE, "an ONNX export", "export the run again")
    export = OnnxExport(folder, info)
    if info.get("format") != "onnx" or info.get("modality") not in ("text", "image"):
        raise FtpeftError(f"{folder / INFO_FILE}: not an ftpeft ONNX export; export the run again.")
    if not export.model_file.is_file():
        raise FtpeftError(f"{export.model_file}: missing; export the run again.")
    _check_source(export)
    return export


def _check_source(export: OnnxExport) -> None:
    """An export in its run (RUN/onnx) must come from the weights the run holds now: a retrained run is refused."""
    source = export.info.get("source") or {}
    model_dir, recorded = source.get("model_dir"), source.get("weights_sha256")
    if not model_dir or not recorded or not Path(model_dir).is_dir():
        return  # copied elsewhere, alone: nothing to compare with
    if Path(source.get("run_dir", "")).resolve() != export.folder.resolve().parent:
        return  # an export placed elsewhere with --output: compared with nothing
    if weights_digest(Path(model_dir)) != recorded:
        raise FtpeftError(
            f"{export.folder}: exported from weights that have changed since (the run in {model_dir} was retrained "
            "or replaced); export it again with --overwrite."
        )


class OnnxPredictor:
    """An ONNX Runtime session over an export; ``probabilities(rows)`` = its logits read by the target."""

    def __init__(self, export: OnnxExport, threads: int | None = None):
        from ftpeft.labels.target import load_target, single_label

        self.export, self.modality = export, export.modality
        labels_file = export.folder / "label_names.json"
        try:
            self.label_names = [str(name) for name in json.loads(labels_file.read_text())]
        except (OSError, ValueError) as error:
            raise FtpeftError(f"{labels_file}: unreadable ({first_line(error)}); export the run again.") from None
        target = load_target(export.folder)
        self.target = target if target is not None else single_label(self.label_names)
        self.session = open_session(export.model_file, threads)
        self.input_names = list(export.info["input_names"])

    def logits(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self.export.info["output_name"]], feed)[0]


class OnnxTextPredictor(OnnxPredictor):
    """Texts -> the export's tokenizer (the run's truncation length, per-batch padding) -> ONNX Runtime."""

    def __init__(self, export: OnnxExport, threads: int | None = None):
        from ftpeft.predict.text import load_tokenizer

        super().__init__(export, threads)
        self.tokenizer = load_tokenizer(export.folder)
        self.encoded = None
        self.windows_of: list[list[int]] | None = None  # an export of a run that read long texts as windows

    def prepare(self, inputs: TableInput, text_columns: list[str] | None) -> None:
        from transformers import DataCollatorWithPadding

        from ftpeft.predict.text import choose_text_columns, encode_rows

        columns = choose_text_columns(inputs, self.export.info.get("text_columns"), text_columns)
        length, stride = int(self.export.info["max_seq_length"]), self.export.info.get("doc_stride")
        self.encoded, self.windows_of = encode_rows(inputs.rows, self.tokenizer, columns, length, stride)
        self.collate = DataCollatorWithPadding(self.tokenizer, return_tensors="np")

    def probabilities(self, indices: list[int]) -> np.ndarray:
        from ftpeft.predict.text import row_logits

        return model_scores(torch.from_numpy(row_logits(self.encoded_logits, indices, self.windows_of)), self.target)

    def encoded_logits(self, indices: list[int]) -> np.ndarray:
        batch = self.collate([self.encoded[i] for i in indices])
        return self.logits({name: np.asarray(batch[name], dtype=np.int64) for name in self.input_names})


class OnnxImagePredictor(OnnxPredictor):
    """Images -> the run's evaluation transform (from timm's data config, saved with the export) -> ONNX Runtime."""

    def __init__(self, export: OnnxExport, threads: int | None = None):
        from timm.data import create_transform

        super().__init__(export, threads)
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in export.info["image_transform"].items()}
        self.transform = create_transform(**config, is_training=False)
        self.files: list[str] = []

    def prepare(self, inputs: ImageInput, text_columns: list[str] | None) -> None:
        self.files = inputs.files

    def probabilities(self, indices: list[int]) -> np.ndarray:
        from ftpeft.vision.data import pixel_batch

        pixels = pixel_batch(self.transform, [read_image(self.files[i]) for i in indices]).numpy()
        logits = self.logits({self.input_names[0]: pixels.astype(np.float32)})
        return model_scores(torch.from_numpy(logits), self.target)


def open_session(model_file: Path, threads: int | None = None):
    """An ONNX Runtime CPU session on ``threads`` threads (default torch's count, which OMP_NUM_THREADS sets, so
    both backends use the same cores)."""
    try:
        import onnxruntime
    except ImportError:
        raise FtpeftError(f"--backend onnx needs onnxruntime: {INSTALL_HINT}.") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for a damaged file  # noqa: BLE001
        raise FtpeftError(f"{model_file}: ONNX Runtime cannot load it ({first_line(error)}); export again.") from None


def load_onnx_predictor(export: OnnxExport, threads: int | None = None) -> OnnxPredictor:
    return (OnnxTextPredictor if export.modality == "text" else OnnxImagePredictor)(export, threads)
