"""Predictors over texts: a transformers classifier (or a LoRA adapter on its base) and a knowledge model.

Inputs are encoded exactly as the recipes encoded their evaluation split (same text columns, truncation at the
length the run used -- its ``--max_seq_length``, auto resolved --, the knowledge ids of the run's columns), then padded
per batch.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import numpy as np
import torch

from ftpeft.core.errors import FtpeftError, first_line
from ftpeft.core.windows import DOCUMENT_COLUMN, pool_windows
from ftpeft.predict.inputs import TableInput
from ftpeft.predict.runs import SavedRun

LEGACY_MAX_SEQ_LENGTH = 128  # the dataclass default before auto: a run_args.yaml without the flag trained at it


def softmax(logits: torch.Tensor) -> np.ndarray:
    """Class probabilities in float64 (the CSV keeps every digit)."""
    return torch.softmax(logits.detach().double(), dim=-1).cpu().numpy()


def model_scores(logits: torch.Tensor, target) -> np.ndarray:
    """What a model's logits mean for its ``target`` (a Target), in float64: class probabilities (softmax), label
    probabilities (sigmoid), or the numbers themselves (a saved regression model outputs the target's units)."""
    if target is None or target.is_single_label:
        return softmax(logits)
    if target.is_multi_label:
        return torch.sigmoid(logits.detach().double()).cpu().numpy()
    return logits.detach().double().reshape(len(logits), -1).cpu().numpy()


def run_target(run: SavedRun, label_names: list[str], folder=None):
    """The run's Target (target.json, else its config.json), else one class per row of ``label_names``."""
    from ftpeft.labels.target import load_target, single_label

    target = load_target(folder or run.model_dir)
    if target is None and folder is None and run.model_dir != run.run_dir:
        target = load_target(run.run_dir)
    return target if target is not None and len(target.names) == len(label_names) else single_label(label_names)


def recorded_setting(run: SavedRun, name: str):
    """(resolved_settings.json's path, what it records for ``name``); (None, None) when no file records it (a run from
    before the setting). A merged/ folder reads its parent's."""
    from ftpeft.core.artifacts import read_json_file
    from ftpeft.core.settings import SETTINGS_FILE
    from ftpeft.tuning.lora import MERGED_DIR

    folders = [run.run_dir, *([run.run_dir.parent] if run.run_dir.name == MERGED_DIR else [])]
    for path in (folder / SETTINGS_FILE for folder in folders):
        if path.is_file():
            recorded = read_json_file(path, "ftpeft predict").get(name)
            return (path, recorded) if recorded is not None else (None, None)
    return None, None


def _recorded_count(run: SavedRun, name: str, minimum: int, what: str) -> int | None:
    """The whole number >= ``minimum`` resolved_settings.json records as ``name``'s used value; None: not recorded."""
    path, recorded = recorded_setting(run, name)
    if recorded is None:
        return None
    used = recorded.get("used") if isinstance(recorded, dict) else None
    if isinstance(used, bool) or not isinstance(used, int) or used < minimum:
        raise FtpeftError(f"{path}: {name} records no usable {what} ({recorded!r:.80}); re-copy the run.")
    return used


def window_stride(run: SavedRun) -> int | None:
    """The overlap of the windows the run read long texts as (--long_texts), or None: it truncated them."""
    _, mode = recorded_setting(run, "long_texts")
    if not isinstance(mode, dict) or mode.get("used") != "windows":
        return None
    stride = _recorded_count(run, "doc_stride", 0, "number")
    if stride is None:
        raise FtpeftError(f"{run.run_dir}: read long texts as windows, but records no doc_stride; re-copy the run.")
    return stride


def max_seq_length(run: SavedRun) -> int:
    """The length the run truncated at: the one resolved_settings.json records (auto resolved), else the
    --max_seq_length of run_args.yaml (runs from before auto), else that time's default."""
    from ftpeft.core.settings import SETTINGS_FILE
    from ftpeft.text.args import parse_max_seq_length

    used = _recorded_count(run, "max_seq_length", 1, "length")
    if used is not None:
        return used
    given = parse_max_seq_length(run.setting("max_seq_length", LEGACY_MAX_SEQ_LENGTH))
    if given is None:
        raise FtpeftError(
            f"{run.run_dir}: trained with --max_seq_length auto, but its {SETTINGS_FILE} does not record the length "
            "used; pass the run's whole output dir (re-copy it)."
        )
    return given


def choose_text_columns(inputs: TableInput, trained: list[str] | None, flag: list[str] | None) -> list[str]:
    """--text_columns, else the columns the run was trained on, else the recipes' guess; each must be in the input."""
    from types import SimpleNamespace

    from ftpeft.text.data import resolve_text_columns

    if flag and trained and len(flag) != len(trained):
        raise FtpeftError(f"--text_columns {flag}: the model was trained on {len(trained)} text column(s) {trained}.")
    if flag or trained:
        columns = list(flag or trained)
        missing = [c for c in columns if c not in inputs.columns]
        if missing:
            source = "--text_columns" if flag else "the text column(s) the model was trained on"
            raise FtpeftError(
                f"--input {inputs.path} lacks {source} {missing}; its columns: {inputs.columns}. "
                + ("Pass --text_columns with the input's names." if not flag else "")
            )
        return columns
    try:
        return resolve_text_columns(inputs.columns, SimpleNamespace(text_columns=None))
    except FtpeftError as error:
        raise FtpeftError(f"--input {inputs.path}: {error}") from None


def encode_texts(rows, tokenizer, columns: list[str], max_length: int):
    """Tokenise ``columns`` of ``rows`` as ``ftpeft.text.data.tokenize`` does (no padding; the collator pads)."""

    def encode(batch):
        texts = [["" if t is None else str(t) for t in batch[c]] for c in columns]
        return tokenizer(*texts, truncation=True, max_length=max_length)

    # in memory under a fresh fingerprint: a prediction is never served from (or written to) datasets' cache, and
    # datasets skips hashing the tokenizer to name one (about 0.1 s a call, which shows at batch 1 on few rows)
    return rows.select_columns(columns).map(
        encode,
        batched=True,
        remove_columns=columns,
        desc="tokenising",
        keep_in_memory=True,
        new_fingerprint=uuid.uuid4().hex,
    )


def encode_windows(rows, tokenizer, columns: list[str], max_length: int, doc_stride: int):
    """Each row of ``columns`` (one text) as the windows the run read it as, with ``DOCUMENT_COLUMN``."""
    from ftpeft.text.windows import tokenize_windows

    if len(columns) != 1:
        raise FtpeftError(f"--text_columns {columns}: the model read one text column as windows; pass one.")
    return tokenize_windows(
        rows.select_columns(columns), tokenizer, columns[0], max_length, doc_stride, desc="tokenising into windows",
        keep_in_memory=True, new_fingerprint=uuid.uuid4().hex,
    )  # fmt: skip


def encode_rows(rows, tokenizer, columns: list[str], max_length: int, doc_stride: int | None):
    """(the encoded inputs, each row's window indices or None): ``rows`` as the run read its texts, cut at
    ``max_length``, or with a ``doc_stride`` (a run that read long texts as windows) split into windows."""
    if doc_stride is None:
        return encode_texts(rows, tokenizer, columns, max_length), None
    windows = encode_windows(rows, tokenizer, columns, max_length, doc_stride)
    windows_of: list[list[int]] = [[] for _ in range(len(rows))]
    for window, row in enumerate(windows[DOCUMENT_COLUMN]):
        windows_of[row].append(window)
    return windows.remove_columns(DOCUMENT_COLUMN), windows_of


def row_logits(logits_of, indices: list[int], windows_of: list[list[int]] | None) -> np.ndarray:
    """The logits of rows ``indices``: ``logits_of(encoded indices)`` itself, or with windows each row's mean over
    its windows (as the run scored its texts)."""
    if windows_of is None:
        return logits_of(indices)
    windows = [window for row in indices for window in windows_of[row]]
    documents = [position for position, row in enumerate(indices) for _ in windows_of[row]]
    return pool_windows(logits_of(windows), None, documents)[0]


def load_tokenizer(folder) -> Any:
    from transformers import AutoTokenizer

    from ftpeft.text.modeling import check_tokenizer_settings

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as error:  # a damaged tokenizer file raises many types (TypeError, KeyError, ...)  # noqa: BLE001
        raise FtpeftError(f"{folder}: could not load its tokenizer ({first_line(error)}).") from None
    check_tokenizer_settings(tokenizer, folder)
    return tokenizer


class TextPredictor:
    """A sequence classifier + its tokenizer; ``probabilities(rows)`` = its outputs as its target reads them
    (``model_scores``: softmax, sigmoid, or the numbers)."""

    modality = "text"

    def __init__(self, run: SavedRun, model, tokenizer, label_names: list[str], device, target=None):
        self.run, self.tokenizer, self.label_names, self.device = run, tokenizer, label_names, device
        self.target = target or run_target(run, label_names)
        self.model = model.to(device).eval()
        self.encoded = None
        self.windows_of: list[list[int]] | None = None  # a run that read long texts as windows: each row's windows

    def prepare(self, inputs: TableInput, text_columns: list[str] | None) -> None:
        from transformers import DataCollatorWithPadding

        columns = choose_text_columns(inputs, self.run.setting("text_columns"), text_columns)
        self.encoded, self.windows_of = encode_rows(
            inputs.rows, self.tokenizer, columns, max_seq_length(self.run), window_stride(self.run)
        )
        self.collate = DataCollatorWithPadding(self.tokenizer)

    @torch.inference_mode()  # as pipeline() runs: no autograd version counters per op
    def probabilities(self, indices: list[int]) -> np.ndarray:
        return model_scores(torch.from_numpy(row_logits(self.logits, indices, self.windows_of)), self.target)

    def logits(self, indices: list[int]) -> np.ndarray:
        """The model's logits of encoded rows (or windows) ``indices``, in float32."""
        batch = self.collate([self.encoded[i] for i in indices])
        logits = self.model(**{name: value.to(self.device) for name, value in batch.items()}).logits
        return logits.float().cpu().numpy()


def _label_names(config) -> list[str]:
    return [str(config.id2label[i]) for i in range(config.num_labels)]


def load_text_predictor(run: SavedRun, device) -> TextPredictor:
    """A transformers classifier folder (a full run, or merged/ of a LoRA run)."""
    from safetensors import SafetensorError
    from transformers import AutoModelForSequenceClassification

    from ftpeft.core.artifacts import check_model_folder, loading_model

    check_model_folder(run.model_dir)
    try:
        with loading_model(run.model_dir):
            model = AutoModelForSequenceClassification.from_pretrained(str(run.model_dir))
    except (OSError, ValueError, SafetensorError) as error:
        raise FtpeftError(f"{run.model_dir}: could not load the model ({str(error).splitlines()[0]}).") from None
    predictor_class = KnowledgePredictor if run.kind == "knowledge" else TextPredictor
    return predictor_class(run, model, load_tokenizer(run.model_dir), _label_names(model.config), device)


def load_adapter_predictor(run: SavedRun, device) -> TextPredictor:
    """A LoRA adapter on the base model named in adapter_config.json, with the head it was trained with."""
    from peft import AutoPeftModelForSequenceClassification

    from ftpeft.core.artifacts import check_model_folder, loading_model, read_json_file
    from ftpeft.core.card import adapter_label_kwargs
    from ftpeft.core.lifecycle import LABEL_NAMES_FILE
    from ftpeft.predict.runs import ADAPTER_CONFIG

    labels_file = run.run_dir / LABEL_NAMES_FILE
    if not labels_file.is_file():
        raise FtpeftError(
            f"{run.run_dir}: a LoRA adapter without {LABEL_NAMES_FILE} (runs write it since `ftpeft predict` "
            "exists), so its class names are unknown; rerun with --merge_adapter and predict from its merged/ folder."
        )
    try:
        label_names = [str(name) for name in json.loads(labels_file.read_text())]
    except ValueError as error:
        raise FtpeftError(f"{labels_file}: not valid JSON ({error}).") from None
    check_model_folder(run.run_dir)
    base = read_json_file(run.run_dir / ADAPTER_CONFIG, "a LoRA adapter").get("base_model_name_or_path")
    try:
        with loading_model(run.run_dir):
            model = AutoPeftModelForSequenceClassification.from_pretrained(
                str(run.run_dir), **adapter_label_kwargs(label_names)
            )
    except (OSError, ValueError) as error:
        raise FtpeftError(
            f"{run.run_dir}: could not load the adapter on its base model {base} ({str(error).splitlines()[0]})."
        ) from None
    target = run_target(run, label_names, run.run_dir)
    return TextPredictor(run, model, load_tokenizer(run.run_dir), label_names, device, target)


class KnowledgePredictor(TextPredictor):
    """A knowledge-injection model: texts plus the knowledge inputs of the columns it was trained with."""

    def prepare(self, inputs: TableInput, text_columns: list[str] | None) -> None:
        from datasets import DatasetDict

        from ftpeft.knowledge.data import KnowledgeCollator, tokenize_with_knowledge

        columns = choose_text_columns(inputs, self.run.setting("text_columns"), text_columns)
        layout, table, knowledge_args = self._knowledge_inputs(inputs)
        wanted = columns + list(knowledge_args.knowledge_column or []) + [knowledge_args.entity_column]
        rows = inputs.rows.select_columns([c for c in dict.fromkeys(wanted) if c])  # no labels or ids
        self.encoded = tokenize_with_knowledge(
            DatasetDict({"predict": rows}), self.tokenizer, columns, max_seq_length(self.run), table, layout,
            knowledge_args, check_coverage=False,
        )["predict"]  # fmt: skip
        self.collate = KnowledgeCollator(self.tokenizer)

    def _knowledge_inputs(self, inputs: TableInput):
        """(layout, table of keys or None, the run's knowledge arguments), checked against the input's columns."""
        from ftpeft.knowledge.args import KnowledgeArguments
        from ftpeft.knowledge.data import KnowledgeLayout
        from ftpeft.knowledge.job import KEYS_FILE
        from ftpeft.knowledge.table import KnowledgeTable

        config = self.model.config
        if config.inject_mode == "none":
            return KnowledgeLayout(False, [], {}), None, KnowledgeArguments(inject="none")
        knowledge_columns = list(self.run.setting("knowledge_column") or [])
        entity_column = self.run.setting("entity_column") if config.token_knowledge else None
        flags = {column: "--knowledge_column" for column in knowledge_columns}
        if entity_column:
            flags[entity_column] = "--entity_column"
        for column, flag in flags.items():
            if column not in inputs.columns:
                raise FtpeftError(
                    f"--input {inputs.path} lacks the column '{column}' that {self.run.run_dir} was trained with "
                    f"({flag} {column}); its columns: {inputs.columns}."
                )
        id_columns, vector_columns = [], {}
        for column in knowledge_columns:
            first = next((v for v in inputs.rows[column] if v is not None), None)
            if isinstance(first, (list, tuple)):
                vector_columns[column] = len(first)
            else:
                id_columns.append(column)
        layout = KnowledgeLayout(bool(config.token_knowledge), id_columns, vector_columns)
        if len(id_columns) != config.num_example_ids or layout.example_vector_dim != config.example_vector_dim:
            raise FtpeftError(
                f"--input {inputs.path}: the knowledge columns {knowledge_columns} give {len(id_columns)} ID column(s) "
                f"and {layout.example_vector_dim} floats; the model was trained with {config.num_example_ids} and "
                f"{config.example_vector_dim}."
            )
        table = None
        if config.token_knowledge or id_columns:
            keys_file = self.run.model_dir / KEYS_FILE
            if not keys_file.is_file():
                raise FtpeftError(f"{keys_file}: missing; the model needs it to find knowledge ids (re-copy the run).")
            table = KnowledgeTable.from_keys_file(keys_file)
        arguments = KnowledgeArguments(
            inject=config.inject_mode, knowledge_column=knowledge_columns or None, entity_column=entity_column
        )
        return layout, table, arguments
