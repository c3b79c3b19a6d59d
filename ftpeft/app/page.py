"""The Gradio page of ``ftpeft app OUTPUT_DIR``: a text box (or an image upload), the class probabilities as bars
(label sets: each label's probability and the labels at or above their thresholds; numbers: the predicted values),
and the run's model card beside them. Served on this machine only unless --host/--share say otherwise."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ftpeft.app.scoring import RunScorer, load_scorer
from ftpeft.core.errors import FtpeftError

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no usage reports, offline

PREDICT_API = "predict"  # the endpoint gradio_client calls: Client(url).predict(text, api_name="/predict")
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # gradio's default theme fetches Google fonts


def require_gradio() -> None:
    """Refuse, in one line and before any model loads, when the app extra is not installed."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise FtpeftError("ftpeft app needs gradio: pip install 'ftpeft[app]'.")


def model_card(run_dir: Path) -> tuple[str, list[str]]:
    """The run's README.md (the card every run writes) without its metadata header, its pictures (the learning
    curve) linked through the server's file route; and those picture files, the only ones the server may send."""
    card = run_dir / "README.md"
    if not card.is_file():
        return f"*{run_dir} has no README.md (model card).*", []
    text = card.read_text(encoding="utf-8", errors="replace")  # shown, not parsed: a damaged byte shows as �
    if text.startswith("---\n") and "\n---\n" in text[4:]:  # the Hub's YAML metadata: not for reading
        text = text[4:].split("\n---\n", 1)[1]
    pictures = []

    def link(match) -> str:
        path = (run_dir / match.group(2)).resolve()
        if not path.is_file():
            return match.group(0)
        pictures.append(str(path))
        return f"![{match.group(1)}](/gradio_api/file={path})"

    text = re.sub(r"!\[([^\]]*)\]\(([^)\s:]+\.(?:png|jpg|jpeg|svg))\)", link, text)
    return text, pictures


def build_page(scorer: RunScorer, card: str):
    """The page as a ``gr.Blocks``; the Predict button and the API call ``scorer`` through one function."""
    require_gradio()
    import gradio as gr

    run, target = scorer.run, scorer.target

    def score(*values) -> dict[str, float]:
        try:
            if scorer.modality == "image":
                if values[0] is None:
                    raise FtpeftError("upload an image first.")
                return scorer.score_image(values[0])
            texts, knowledge = list(values[: len(scorer.text_columns)]), None
            if scorer.knowledge_columns:
                knowledge = _knowledge_row(values[-1])
            return scorer.score_text(["" if t is None else t for t in texts], knowledge)
        except FtpeftError as error:
            raise gr.Error(" ".join(str(error).split())) from None

    def predict(*values):  # label sets: the probabilities and the decision at the run's thresholds
        scores = score(*values)
        return (scores, scorer.decision(scores)) if target.is_multi_label else scores

    with gr.Blocks(title=f"ftpeft app: {run.run_dir.name}") as page:
        gr.Markdown(f"## {run.run_dir.name}\n{run.kind} model in `{run.run_dir}`")
        with gr.Row():
            with gr.Column(scale=1):
                if scorer.modality == "image":
                    inputs = [gr.Image(type="filepath", label="image", sources=["upload"], elem_id="ftpeft-image")]
                else:
                    inputs = [
                        gr.Textbox(label=column, lines=3, elem_id=f"ftpeft-text-{i}")
                        for i, column in enumerate(scorer.text_columns)
                    ]
                    if scorer.knowledge_columns:
                        example = json.dumps({column: "..." for column in scorer.knowledge_columns})
                        inputs.append(gr.Textbox(label="knowledge columns (JSON)", placeholder=example, lines=3))
                button = gr.Button("Predict", variant="primary", elem_id="ftpeft-predict")
                if target.is_regression:  # numbers in the target's units, not bars
                    outputs = gr.JSON(label="predicted value(s)", elem_id="ftpeft-probabilities")
                else:
                    outputs = gr.Label(
                        num_top_classes=len(scorer.label_names),
                        label="label probabilities" if target.is_multi_label else "class probabilities",
                        elem_id="ftpeft-probabilities",
                    )
                if target.is_multi_label:
                    outputs = [outputs, gr.Markdown(elem_id="ftpeft-decision")]
            with gr.Column(scale=1):
                gr.Markdown(card, elem_id="ftpeft-card")
        # one request at a time: the predictor holds the prepared input between prepare() and probabilities()
        button.click(predict, inputs, outputs, api_name=PREDICT_API, concurrency_limit=1)
    return page


def _knowledge_row(text: str | None) -> dict:
    try:
        row = json.loads(text or "{}")
    except ValueError as error:
        raise FtpeftError(f"knowledge columns: not valid JSON ({error}).") from None
    if not isinstance(row, dict):
        raise FtpeftError('knowledge columns: expected a JSON object {"column": value, ...}.')
    return row


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int | None = None, share: bool = False, block=True):
    """Load the run, build its page and launch it; returns the launched ``gr.Blocks`` (``block`` waits on it)."""
    require_gradio()
    scorer = load_scorer(run_dir)  # a bad OUTPUT_DIR is one line here, before gradio is imported
    import gradio as gr
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # one row per request: no 'tokenising' bar in the server's log
    card, pictures = model_card(scorer.run.run_dir)
    page = build_page(scorer, card)
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=["ui-monospace", "monospace"])
    try:
        page.launch(
            server_name=host,
            server_port=port,
            share=share,
            prevent_thread_lock=not block,
            quiet=not block,
            show_error=True,  # an unreadable upload says why on the page, not 'error'
            allowed_paths=pictures,  # the card's pictures, not the run's weights
            theme=theme,
        )
    except OSError as error:  # a port in use, a host name that does not resolve
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FtpeftError(f"--host {host} --port {port or 'auto'}: cannot serve the page there ({reason}).") from None
    return page
