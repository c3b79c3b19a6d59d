"""One input at a time through ``ftpeft predict``'s predictors: what the page of ``ftpeft app`` shows.

A typed text becomes a one-row table and an uploaded image a one-file folder, the inputs ``ftpeft predict``
reads from disk, so each kind of run is loaded, encoded and scored by the same code as the CSV.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from ftpeft.core.errors import FtpeftError
from ftpeft.predict.runs import SavedRun

PAGE_INPUT = Path("the page's input")  # what predict's messages call --input
DEFAULT_TEXT_COLUMN = "text"  # the first guess of ftpeft.text.data, so a run without --text_columns finds it


@dataclasses.dataclass
class RunScorer:
    """A finished run with its predictor loaded: ``modality`` says what the page asks for (a text or an image)."""

    run: SavedRun
    predictor: Any
    modality: str  # "text" or "image"
    text_columns: list[str]  # one box per column (two for a sentence-pair model)
    knowledge_columns: list[str]  # the extra columns a knowledge model was trained with

    @property
    def label_names(self) -> list[str]:
        return list(self.predictor.label_names)

    @property
    def target(self):
        """The run's Target (one class per row, label sets with their thresholds, or numbers)."""
        from ftpeft.labels.target import single_label

        return getattr(self.predictor, "target", None) or single_label(self.label_names)

    def decision(self, scores: dict[str, float]) -> str:
        """What the page says under a label set's probabilities: the labels at or above their thresholds (the
        ones chosen on validation, from thresholds.json / config.json), and the thresholds."""
        thresholds = dict(zip(self.target.names, self.target.decision_thresholds()))
        chosen = [name for name, p in scores.items() if p >= thresholds[name]]
        listed = ", ".join(f"{name} {thresholds[name]:.2f}" for name in self.target.names)
        return f"**predicted:** {', '.join(chosen) or '(no label)'}\n\nthresholds: {listed}"

    def score_text(self, texts: list[str], knowledge: dict[str, Any] | None = None) -> dict[str, float]:
        """Class name -> probability of one row: ``texts`` fill ``text_columns``, ``knowledge`` the rest."""
        from datasets import Dataset

        from ftpeft.predict.inputs import TableInput

        if self.modality != "text":
            raise FtpeftError(f"{self.run.run_dir} is an image model; give it an image, not a text.")
        if len(texts) != len(self.text_columns):
            raise FtpeftError(
                f"the model reads {len(self.text_columns)} text(s) {self.text_columns}, got {len(texts)}."
            )
        row = {**(knowledge or {}), **dict(zip(self.text_columns, texts))}
        missing = [c for c in self.knowledge_columns if c not in row]
        if missing:
            raise FtpeftError(f"the model also needs the knowledge column(s) {missing} (trained with them).")
        return self._score(TableInput(PAGE_INPUT, Dataset.from_list([row]), ["0"]))

    def score_image(self, path: str | Path) -> dict[str, float]:
        """Class name -> probability of the image file at ``path``, read and transformed as ``ftpeft predict`` does."""
        from ftpeft.predict.inputs import ImageInput
        from ftpeft.vision.data import verify_images

        if self.modality != "image":
            raise FtpeftError(f"{self.run.run_dir} is a text model; give it a text, not an image.")
        good, skipped = verify_images([str(path)])
        if not good:
            raise FtpeftError(f"cannot read the image: {skipped[0].split(chr(9), 1)[1]}")  # path<TAB>reason
        return self._score(ImageInput(Path(path).parent, [str(path)], ["0"], []))

    def _score(self, inputs) -> dict[str, float]:
        self.predictor.prepare(inputs, None)
        probabilities = np.asarray(self.predictor.probabilities([0]))[0]
        return {name: float(p) for name, p in zip(self.label_names, probabilities)}


def load_scorer(run_dir: str | Path) -> RunScorer:
    """Detect the run's kind and load its predictor (the checks and one-line errors of ``ftpeft predict``)."""
    from accelerate import PartialState

    from ftpeft.predict.job import input_modality, load_predictor
    from ftpeft.predict.runs import detect_run

    run = detect_run(run_dir)
    modality = input_modality(run)
    predictor = load_predictor(run, PartialState().device)
    text_columns = list(run.setting("text_columns") or [DEFAULT_TEXT_COLUMN]) if modality == "text" else []
    knowledge_columns = []
    if run.kind == "knowledge":
        entity_column = run.setting("entity_column")
        knowledge_columns = list(run.setting("knowledge_column") or []) + ([entity_column] if entity_column else [])
    return RunScorer(run, predictor, modality, text_columns, knowledge_columns)
