"""``ftpeft export OUTPUT_DIR --format onnx [--quantize int8]``: a finished run's classifier as one ONNX file.

    ftpeft export outputs/bert_cls                       # -> outputs/bert_cls/onnx/model.onnx (fp32)
    ftpeft export outputs/bert_cls --quantize int8 --output outputs/bert_cls/onnx-int8
    ftpeft export outputs/photos --quantize int8 --calibration_data photos/train   # static: convolutions too
    ftpeft predict outputs/bert_cls --backend onnx --input test.csv --output preds.csv

The folder written holds everything ``ftpeft predict --backend onnx`` reads, so it can be copied alone:

    model.onnx          inputs input_ids, attention_mask (+ token_type_ids) [batch, sequence] or pixel_values
                        [batch, 3, H, W]; output logits [batch, outputs]
    onnx_export.json    what was exported and how: the run, its weights' sha256, the text columns and truncation
                        length or the image transform, the check against torch, the versions
    label_names.json    the classes (labels, targets), in output order
    target.json         the problem type: softmax, sigmoid + thresholds, or the numbers as they are
    tokenizer files     text models

Exported: text classifiers that ``from_pretrained`` loads (a full run, the merged/ folder of a LoRA run, the
mean-pooling readout) and timm models. Refused, in one line: knowledge-injection models (their knowledge inputs come
from ftpeft's mention matching), train_head heads (their backbones rerun in ftpeft) and LoRA adapters without merged/.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ftpeft.core.errors import FtpeftError, first_line
from ftpeft.predict.runs import SavedRun

EXPORT_DIR = "onnx"  # under the run's output dir unless --output says otherwise
MODEL_FILE = "model.onnx"
INFO_FILE = "onnx_export.json"
FORMATS = ("onnx",)
QUANTIZE_CHOICES = ("none", "int8")
# int8 covers the matrix products (transformer layers, linear heads) and embedding tables; convolutions stay fp32: with
# ONNX Runtime's dynamic ConvInteger the MNIST EfficientNet-Lite0 ran 6x slower than fp32 at batch 32 and its accuracy
# fell from 1.00 to 0.44 (64 test digits)
QUANTIZED_OPS = ("MatMul", "Gemm", "Gather")
FP32_WEIGHT_OPS = ("Conv", "ConvTranspose")  # weighted ops that dynamic quantisation leaves in fp32
CHECK_IMAGES = 8  # static int8: its logits are compared with torch's on this many calibration images
CALIBRATION_IMAGES = 256  # static int8: the ranges of activations are read on this many images at most
CHECK_TOLERANCE = 1e-4  # max |logit difference| of the fp32 export vs torch on the check rows
IMAGE_INPUT = "pixel_values"
OUTPUT_NAME = "logits"
INSTALL_HINT = "pip install -e '.[onnx]'"
# the run kinds of ftpeft.predict.runs that cannot be exported, and why (one line each)
REFUSED = {
    "knowledge": "a knowledge-injection model needs ftpeft to turn texts into its knowledge inputs (mention "
    "matching against the table), which an ONNX graph cannot carry; serve it with `ftpeft predict`",
    "head": "a train_head head reruns its backbones and reads their layers in ftpeft; serve it with `ftpeft "
    "predict`, or train the linear head on a timm backbone's pre-logits, which saves a complete timm model",
    "adapter": "a LoRA adapter without merged/: rerun with --merge_adapter (or merge it into its base model) and "
    "export the run, whose merged/ folder is then exported",
}
# example rows the export traces and is checked on: different lengths, so padding is exercised
CHECK_TEXTS = (
    "an example sentence",
    "a second, longer example sentence that the exporter traces, so that its rows differ in length",
)


@dataclasses.dataclass
class ExportReport:
    """What ``export_onnx`` wrote: the folder, its model, and how far the export's logits are from torch's."""

    folder: Path
    model_file: Path
    quantize: str
    max_abs_difference: float  # on the check rows; fp32 must stay within CHECK_TOLERANCE
    seconds: float
    quantized_from: Path | None = None  # the fp32 export that int8 started from, when it was current
    fp32_convolutions: int = 0  # left in fp32 by int8's dynamic quantisation
    calibration_images: int = 0  # static int8 of an image model: the images its activation ranges came from

    def line(self) -> str:
        precision = "int8 weights" if self.quantize == "int8" else "fp32"
        if self.quantize == "int8" and self.fp32_convolutions:
            precision = (
                f"int8 weights in {', '.join(QUANTIZED_OPS)}; its {self.fp32_convolutions} convolutions stay fp32, "
                "which ONNX Runtime's dynamic quantisation does not cover (--calibration_data quantises them too)"
            )
        elif self.quantize == "int8" and self.calibration_images:
            precision = f"int8 weights and activations, calibrated on {self.calibration_images} images"
        if self.quantized_from is not None:
            precision += f", quantised from {self.quantized_from}"
        return (
            f"exported {self.model_file} ({precision}, {self.model_file.stat().st_size / 2**20:.1f} MiB) in "
            f"{self.seconds:.0f} s; its logits differ from torch's by at most {self.max_abs_difference:.2g}"
        )


class LogitsOnly(torch.nn.Module):
    """The classifier with named tensor inputs and its logits as the one output (a ModelOutput does not export)."""

    def __init__(self, model: torch.nn.Module, modality: str):
        super().__init__()
        self.model, self.modality = model, modality

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, pixel_values=None):
        if self.modality == "image":
            return self.model(pixel_values)
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits


def check_exportable(run: SavedRun) -> None:
    """Refuse, before any model loads, a run kind that has no ONNX form."""
    if run.kind in REFUSED:
        raise FtpeftError(f"ftpeft export {run.run_dir}: {REFUSED[run.kind]}.")


def require_onnx() -> None:
    """The exporter (onnx, onnxscript) and ONNX Runtime are an extra; say how to get them."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise FtpeftError(f"ONNX export needs {', '.join(missing)}: {INSTALL_HINT}.")


def weights_digest(folder: Path) -> dict[str, str]:
    """sha256 of each weight file of a model folder: ``--backend onnx`` refuses an export of weights since changed."""
    from ftpeft.core.artifacts import weight_files
    from ftpeft.core.outputs import sha256_of

    return {path.name: sha256_of(path) for path in weight_files(folder)}


def text_example(predictor, max_length: int) -> dict[str, torch.Tensor]:
    """The check rows, tokenised and padded as the torch predictor's collator pads them."""
    from transformers import DataCollatorWithPadding

    tokenizer = predictor.tokenizer
    rows = [dict(tokenizer(text, truncation=True, max_length=max_length)) for text in CHECK_TEXTS]
    return dict(DataCollatorWithPadding(tokenizer)(rows))


def image_example(data_config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Two seeded random images at the model's input size (the transform's output shape)."""
    generator = torch.Generator().manual_seed(0)
    return {IMAGE_INPUT: torch.randn(2, *data_config["input_size"], generator=generator)}


def dynamic_shapes(example: dict[str, torch.Tensor]) -> dict[str, dict[int, Any]]:
    """Batch (and, for texts, sequence) axes left free; an image's channels and size stay fixed."""
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    return {name: {0: batch} if name == IMAGE_INPUT else {0: batch, 1: sequence} for name in example}


def torch_logits(module: torch.nn.Module, example: dict[str, torch.Tensor]) -> np.ndarray:
    with torch.no_grad():
        return module(**example).detach().float().numpy()


def export_graph(module: torch.nn.Module, example: dict[str, torch.Tensor], path: Path) -> None:
    """torch.onnx.export through torch.export (dynamo); any failure is one line naming the stage."""
    import warnings

    size = sum(p.numel() * p.element_size() for p in module.parameters())
    try:
        with warnings.catch_warnings():  # the exporter's notes on axis names and the like
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (),
                kwargs=example,
                input_names=list(example),
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic_shapes(example),
                dynamo=True,
                verbose=False,
            )
            program.save(str(path), external_data=size > 1.5 * 2**30)  # protobuf's 2 GiB limit on one file
    except Exception as error:  # torch.export raises many types for untraceable code  # noqa: BLE001
        raise FtpeftError(f"torch.onnx.export could not export the model ({first_line(error)}).") from None


def onnx_logits(path: Path, example: dict[str, torch.Tensor]) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {name: value.numpy() for name, value in example.items()})[0]


def quantize_int8(source: Path, destination: Path) -> int:
    """ONNX Runtime's dynamic quantisation of the QUANTIZED_OPS: int8 weights, activations quantised per batch at run
    time. Returns how many convolutions it left in fp32 (dynamic quantisation does not cover them), so that the
    export says so instead of calling a conv net int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def quantize(prepared: str) -> None:
        quantize_dynamic(
            prepared, str(destination), weight_type=QuantType.QInt8, op_types_to_quantize=list(QUANTIZED_OPS)
        )

    return quantized_from_prepared(source, destination, quantize)


def quantized_from_prepared(source: Path, destination: Path, quantize: Callable[[str], None]) -> int:
    """``quantize(prepared)`` writes ``destination`` from ``source`` after the quantiser's recommended pre-processing
    (a staged prepared.onnx, removed after); returns the convolutions ``destination`` left in fp32."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = source.with_name("prepared.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize(str(prepared))
    prepared.unlink()
    return fp32_convolutions(onnx.load(str(destination)))


def fp32_convolutions(model) -> int:
    """Convolutions whose weights are fp32: not fed by a DequantizeLinear (the QDQ form of an int8 weight)."""
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return sum(node.op_type in FP32_WEIGHT_OPS and node.input[1] not in dequantized for node in model.graph.node)


class CalibrationImages:
    """ONNX Runtime's CalibrationDataReader over image files: batches of the export's evaluation transform."""

    def __init__(self, files: list[str], transform, input_name: str, batch_size: int = 16):
        self.batches = iter(range(0, len(files), batch_size))
        self.files, self.transform, self.input_name, self.batch_size = files, transform, input_name, batch_size

    def get_next(self) -> dict[str, np.ndarray] | None:
        from ftpeft.predict.inputs import read_image
        from ftpeft.vision.data import pixel_batch

        start = next(self.batches, None)
        if start is None:
            return None
        images = [read_image(f) for f in self.files[start : start + self.batch_size]]
        return {self.input_name: pixel_batch(self.transform, images).numpy()}


def calibration_files(folder: str | Path) -> list[str]:
    """Up to CALIBRATION_IMAGES image files of ``folder`` (recursively), a seeded sample when there are more, so
    that class folders are all represented; unreadable files are skipped."""
    import random

    from ftpeft.predict.inputs import read_image_folder

    path = Path(folder)
    if not path.is_dir():
        raise FtpeftError(f"--calibration_data {folder}: not a folder; give a folder of the run's training images.")
    try:
        files = [str(f) for f in read_image_folder(path, strict=False).files]
    except FtpeftError:
        raise FtpeftError(
            f"--calibration_data {folder}: no readable images in it; give the run's training images."
        ) from None
    if len(files) > CALIBRATION_IMAGES:
        files = sorted(random.Random(0).sample(files, CALIBRATION_IMAGES))
    return files


def quantize_static_int8(source: Path, destination: Path, reader: CalibrationImages) -> int:
    """ONNX Runtime's static quantisation in QDQ form: int8 weights per channel (convolutions included) and uint8
    activations with ranges calibrated (min/max) on ``reader``'s images. Returns the convolutions left in fp32."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    def quantize(prepared: str) -> None:
        quantize_static(
            prepared,
            str(destination),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )

    return quantized_from_prepared(source, destination, quantize)


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "timm", "onnx", "onnxscript", "onnxruntime"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def current_fp32_export(run: SavedRun, weights: dict[str, str]) -> Path | None:
    """RUN/onnx/model.onnx when it is an fp32 export of the weights the run holds now (``--quantize int8`` starts
    from it instead of tracing again); else None."""
    import json

    folder = run.run_dir / EXPORT_DIR
    try:
        info = json.loads((folder / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    current = info.get("quantize") == "none" and (info.get("source") or {}).get("weights_sha256") == weights
    return folder / MODEL_FILE if current and (folder / MODEL_FILE).is_file() else None


def check_output_folder(folder: Path, run: SavedRun, overwrite: bool) -> None:
    """The export folder is new, empty, or (with --overwrite) an earlier export: never the run or a folder above it."""
    resolved, run_dir = folder.resolve(), run.run_dir.resolve()
    if resolved == run_dir or resolved in run_dir.parents:
        raise FtpeftError(f"--output {folder} holds the run itself; name a new folder for the export.")
    if folder.exists() and not folder.is_dir():
        raise FtpeftError(f"--output {folder} is a file; name a folder for the export.")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if not (folder / INFO_FILE).is_file():
        raise FtpeftError(f"--output {folder} exists and is not an ONNX export; name a new folder for the export.")
    if not overwrite:
        raise FtpeftError(f"--output {folder} holds an earlier export; pass --overwrite to replace it.")


def export_onnx(
    run_dir: str | Path,
    output: str | Path | None = None,
    quantize: str = "none",
    overwrite: bool = False,
    calibration_data: str | Path | None = None,
):
    """Export the run in ``run_dir`` to ``output`` (default RUN_DIR/onnx): model.onnx + what predicting needs.

    The fp32 graph is checked against torch on two rows before anything is written (max |logit difference| <=
    CHECK_TOLERANCE); ``quantize="int8"`` then replaces it by its int8 version (quantising RUN/onnx/model.onnx when
    that is a current fp32 export, without tracing again): dynamic quantisation, or for an image model with
    ``calibration_data`` (a folder of its training images) static quantisation of every layer, convolutions
    included. Returns an ExportReport."""
    from ftpeft.core.outputs import staged, write_json
    from ftpeft.labels.target import save_target
    from ftpeft.predict.job import input_modality, load_predictor
    from ftpeft.predict.runs import detect_run
    from ftpeft.predict.text import max_seq_length, window_stride

    if quantize not in QUANTIZE_CHOICES:
        raise FtpeftError(f"--quantize {quantize!r}: use one of {', '.join(QUANTIZE_CHOICES)}.")
    started = time.perf_counter()
    run = detect_run(run_dir)
    check_exportable(run)
    folder = Path(output) if output else run.run_dir / EXPORT_DIR
    check_output_folder(folder, run, overwrite)
    require_onnx()
    modality = input_modality(run)
    if calibration_data is not None and (quantize != "int8" or modality != "image"):
        raise FtpeftError(
            "--calibration_data calibrates --quantize int8 of an image model; a text model's int8 is dynamic and "
            "needs none: drop the flag."
        )
    calibration = calibration_files(calibration_data) if calibration_data is not None else []
    predictor = load_predictor(run, torch.device("cpu"))
    module = LogitsOnly(predictor.model, modality).eval()
    info: dict[str, Any] = {"modality": modality, "run_kind": run.kind}
    if modality == "text":
        info["max_seq_length"] = max_seq_length(run)
        info["doc_stride"] = window_stride(run)  # None: the run truncated long texts
        info["text_columns"] = run.setting("text_columns")
        example = text_example(predictor, info["max_seq_length"])
    else:
        from timm.data import resolve_data_config

        info["image_transform"] = resolve_data_config({}, model=predictor.model)
        example = image_example(info["image_transform"])
    expected = torch_logits(module, example)

    weights = weights_digest(run.model_dir)
    reused = current_fp32_export(run, weights) if quantize == "int8" else None

    with staged(folder, directory=True) as staging:  # replaces an earlier export only once this one is whole
        model_path = staging / MODEL_FILE
        fp32_path = staging / "fp32.onnx" if quantize == "int8" else model_path
        if reused is not None:  # the fp32 graph of these weights is there: quantise it, no second trace
            shutil.copyfile(reused, fp32_path)
        else:
            export_graph(module, example, fp32_path)
        difference = float(np.abs(onnx_logits(fp32_path, example) - expected).max())
        if not difference <= CHECK_TOLERANCE:
            raise FtpeftError(
                f"the ONNX export of {run.model_dir} gives logits {difference:.2g} away from torch's (more than "
                f"{CHECK_TOLERANCE:g}); it is not written. Report it with the model's architecture."
            )
        fp32_convolutions = 0
        if quantize == "int8" and calibration:
            reader = CalibrationImages(calibration, predictor.transform, IMAGE_INPUT)
            fp32_convolutions = quantize_static_int8(fp32_path, model_path, reader)
            # random pixels fall outside the calibrated ranges: the difference is read on real images
            example = CalibrationImages(calibration[:CHECK_IMAGES], predictor.transform, IMAGE_INPUT).get_next()
            example = {name: torch.from_numpy(value) for name, value in example.items()}
            expected = torch_logits(module, example)
        elif quantize == "int8":
            fp32_convolutions = quantize_int8(fp32_path, model_path)
        if quantize == "int8":
            fp32_path.unlink()
            difference = float(np.abs(onnx_logits(model_path, example) - expected).max())
        if modality == "text":
            predictor.tokenizer.save_pretrained(str(staging))
        write_json(staging / "label_names.json", list(predictor.label_names))
        save_target(staging, predictor.target)
        info.update(
            format="onnx",
            model_file=MODEL_FILE,
            quantize=quantize,
            quantized_ops=list(QUANTIZED_OPS) if quantize == "int8" else [],
            fp32_convolutions=fp32_convolutions,
            calibration={"folder": str(Path(calibration_data).resolve()), "images": len(calibration)}
            if calibration
            else None,
            input_names=list(example),
            output_name=OUTPUT_NAME,
            source={
                "run_dir": str(run.run_dir.resolve()),
                "model_dir": str(run.model_dir.resolve()),
                "weights_sha256": weights,
                "quantized_from": str(reused) if reused is not None else None,
            },
            check={"rows": len(expected), "max_abs_logit_difference": difference},
            versions=_versions(),
        )
        write_json(staging / INFO_FILE, info)
    seconds = time.perf_counter() - started
    return ExportReport(
        folder, folder / MODEL_FILE, quantize, difference, seconds, reused, fp32_convolutions, len(calibration)
    )
