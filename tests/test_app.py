"""`ftpeft app`: the page shows `ftpeft predict`'s probabilities, through its HTTP API (gradio_client) and in a
real browser (headless Debian Chromium driven by selenium), for a trained text model, a LoRA adapter and a timm
image model.

The reference is always `ftpeft predict` on a one-row file (or a one-image folder) holding the same input.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import (
    CLASSES,
    ROOT,
    TIMM_ARGS,
    TIMM_MODEL,
    load_recipe,
    make_tiny_text_model,
    make_wordpiece_tokenizer,
    run,
    snapshot,
    tiny_args,
    write_class_folders,
    write_glove,
    write_knowledge_dataset,
)

from ftpeft import FtpeftError, cli

bert_cls = load_recipe("bert_cls")
image_cls = load_recipe("image_cls")
knowledge_cls = load_recipe("knowledge_cls")
extract_features = load_recipe("extract_features")
train_head = load_recipe("train_head")

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's chromium + chromium-driver
TEXT_LABELS = ["neg", "pos"]
TEXTS = ["the film was good and lovely", "awful plot , a boring actor"]
ATOL = 1e-9  # the same float64 probabilities, through a CSV, JSON or an HTML attribute


def predict_csv(run_dir: Path, tmp_path: Path, row: dict | None = None, image: Path | None = None) -> dict:
    """Label -> probability of one row (a text and, for a knowledge model, its knowledge columns) or one image,
    from ``ftpeft predict`` (its CSV), in the model's order."""
    scratch = tmp_path / f"reference{len(list(tmp_path.glob('reference*')))}"
    scratch.mkdir()
    if image is None:
        source = scratch / "input.jsonl"
        source.write_text(json.dumps(row) + "\n")
    else:
        source = scratch / "images"
        source.mkdir()
        shutil.copy(image, source / image.name)
    assert cli.main(["predict", str(run_dir), "--input", str(source), "--output", str(scratch / "preds.csv")]) == 0
    result = pd.read_csv(scratch / "preds.csv").iloc[0]
    return {name: float(result[name]) for name in result.index[2:]}


def assert_same_probabilities(shown: dict, expected: dict) -> None:
    """Same label names and probabilities (the page lists the most probable first; the CSV in the model's order)."""
    assert sorted(shown) == sorted(expected)
    np.testing.assert_allclose([shown[name] for name in expected], list(expected.values()), rtol=0, atol=ATOL)
    assert sum(shown.values()) == pytest.approx(1.0, abs=1e-6)  # a scikit-learn head on float32 features: 1 - 4e-8


# --- runs: each kind trained once per module by its recipe (tiny model, 8 steps at large LRs) --------------


class Runs:
    """Trains each kind of run once per module, on first use: ``runs.case(kind)`` -> its output dir."""

    def __init__(self, tmp: Path, tiny_bert_dir, text_csv_dir):
        self.tmp, self.bert, self.text_data, self.built = tmp, tiny_bert_dir, text_csv_dir, {}

    def case(self, kind: str) -> Path:
        if kind not in self.built:
            self.built[kind] = getattr(self, kind)(self.tmp / kind)
        return self.built[kind]

    def text(self, out: Path, *flags: str) -> Path:
        lrs = ["--learning_rate", "0.01", "--head_lr", "0.3", "--lora_lr", "0.05", "--max_steps", "8"]
        bert_cls.main(tiny_args(self.bert, self.text_data, out, *lrs, *flags))
        return out

    def adapter(self, out: Path) -> Path:  # without --merge_adapter: the adapter on its base model
        return self.text(out, "--use_peft", "--lora_r", "4")

    def knowledge(self, out: Path) -> Path:
        """concat fusion with all three knowledge inputs: entity spans, an ID column and a float column."""
        data = self.tmp / "kb_data"
        data.mkdir()
        encoder = make_tiny_text_model(
            self.tmp / "kb_bert", "bert", num_layers=2, tokenizer=make_wordpiece_tokenizer(), head=False
        )
        argv = [
            "--model_name_or_path", encoder, "--train_file", write_knowledge_dataset(data / "train.jsonl"),
            "--output_dir", out, "--max_steps", "4", "--per_device_train_batch_size", "4", "--learning_rate", "0.01",
            "--validation_split_percentage", "25", "--eval_strategy", "no", "--save_strategy", "no",
            "--inject", "concat", "--knowledge_file", write_glove(data / "kb.txt"),
            "--knowledge_column", "features", "entity_id", "--entity_column", "entities",
        ]  # fmt: skip
        knowledge_cls.main(list(map(str, argv)))
        return out

    def images(self) -> Path:
        """ROOT/train/<class>/*.jpg and one test image per class in ROOT/test/<class>/."""
        root = self.tmp / "images"
        if not root.is_dir():
            write_class_folders(root / "train", per_class=4)
            write_class_folders(root / "test", per_class=1)
        return root

    def timm(self, out: Path) -> Path:
        argv = ["--image_dir", self.images(), *TIMM_ARGS, "--output_dir", out, "--max_steps", "2",
                "--per_device_train_batch_size", "4", "--save_strategy", "no"]  # fmt: skip
        image_cls.main(list(map(str, argv)))
        return out

    def image_head(self, out: Path) -> Path:
        """A logistic regression on the test model's features: the page reruns the backbone on the upload."""
        argv = ["--image_dir", self.images(), "--model_name_or_path", TIMM_MODEL, "--image_size", "32",
                "--feature_dir", self.tmp / "features"]  # fmt: skip
        features = extract_features.main(list(map(str, argv)))["feature_dir"]
        train_head.main(["--features_dir", features, "--head", "logreg", "--output_dir", str(out), "--max_iter", "200"])
        return out

    def test_images(self) -> list[Path]:
        return sorted((self.images() / "test").rglob("*.jpg"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert_dir, text_csv_dir):
    return Runs(tmp_path_factory.mktemp("app_runs"), tiny_bert_dir, text_csv_dir)


@contextlib.contextmanager
def served(run_dir: Path):
    """``ftpeft app RUN_DIR`` in this process on a free local port; yields the page's URL."""
    from ftpeft.app.page import serve

    page = serve(run_dir, block=False)
    try:
        yield page.local_url
    finally:
        page.close()


def http_status(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def api_probabilities(client, *inputs) -> dict:
    """The predict endpoint's answer (gr.Label's {"label", "confidences"}) as label -> probability."""
    answer = client.predict(*inputs, api_name="/predict")
    return {item["label"]: float(item["confidence"]) for item in answer["confidences"]}


# --- fast: the scorer behind the page, and the command's refusals ------------------------------------------


@pytest.mark.parametrize("text_columns", [None, ["premise", "hypothesis"]])
def test_the_scorer_gives_predicts_probabilities_for_one_text(tiny_bert_dir, tmp_path, text_columns):
    """An untrained tiny classifier saved with its tokenizer is a text output dir (no training needed here); with
    the run_args.yaml of a sentence-pair run the page asks for both texts."""
    from ftpeft.app.scoring import load_scorer

    run_dir = Path(tiny_bert_dir)
    if text_columns:
        run_dir = shutil.copytree(tiny_bert_dir, tmp_path / "pair_run")
        (run_dir / "run_args.yaml").write_text(yaml.safe_dump({"text_columns": text_columns}))
    scorer = load_scorer(run_dir)
    columns = text_columns or ["text"]
    assert scorer.modality == "text" and scorer.text_columns == columns and scorer.knowledge_columns == []
    pairs = [(text, TEXTS[1 - i]) for i, text in enumerate(TEXTS)]
    shown = [scorer.score_text(list(pair[: len(columns)])) for pair in pairs]
    for pair, probabilities in zip(pairs, shown):
        assert_same_probabilities(probabilities, predict_csv(run_dir, tmp_path, dict(zip(columns, pair))))
    assert np.abs(np.subtract(list(shown[0].values()), list(shown[1].values()))).max() > 100 * ATOL
    with pytest.raises(FtpeftError, match="is a text model; give it a text"):
        scorer.score_image(tmp_path / "any.jpg")


@pytest.mark.slow  # a fresh interpreter: the import of torch alone takes seconds
def test_ftpeft_help_and_the_app_module_do_not_import_gradio():
    code = (
        "import sys, contextlib, io\n"
        "from ftpeft import cli\n"
        "import ftpeft.app.page\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    cli.main(['app', '--help'])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('gradio', 'gradio_client', 'selenium')))"
    )
    result = run([sys.executable, "-c", code], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    "make_dir, message",
    [
        (lambda tmp: tmp / "nope", "nope: no such directory"),
        (lambda tmp: tmp, "not an ftpeft output dir"),
    ],
)
def test_a_bad_output_dir_is_one_line_and_exit_2(tmp_path, capsys, make_dir, message):
    with pytest.raises(SystemExit) as exit:
        cli.main(["app", str(make_dir(tmp_path))])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.startswith("error: ") and err.strip().count("\n") == 0 and message in err


@pytest.mark.slow  # imports gradio
def test_a_port_in_use_is_one_line_and_exit_2(tiny_bert_dir, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit:
            cli.main(["app", tiny_bert_dir, "--port", str(port)])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.strip().count("\n") == 0, err
    assert err.startswith(f"error: --host 127.0.0.1 --port {port}: cannot serve the page there"), err


def test_the_app_flags_parse_with_local_defaults():
    args = cli._parser().parse_args(["app", "outputs/bert_cls"])
    assert (args.output_dir, args.host, args.port, args.share) == ("outputs/bert_cls", "127.0.0.1", None, False)
    args = cli._parser().parse_args(["app", "outputs/x", "--host", "0.0.0.0", "--port", "8000", "--share"])
    assert (args.host, args.port, args.share) == ("0.0.0.0", 8000, True)


# --- the HTTP API: gradio_client against the launched page --------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["text", "adapter"])
def test_the_api_returns_predicts_probabilities_for_a_text(runs, kind, tmp_path):
    pytest.importorskip("gradio_client")
    from gradio_client import Client

    run_dir = runs.case(kind)
    before = snapshot(run_dir)
    with served(run_dir) as url:
        client = Client(url, verbose=False)
        shown = [api_probabilities(client, text) for text in TEXTS]
        weights = next(p for p in run_dir.iterdir() if p.suffix == ".safetensors")
        assert http_status(f"{url}gradio_api/file={(run_dir / 'learning_curve.png').resolve()}") == 200
        assert http_status(f"{url}gradio_api/file={weights.resolve()}") == 403  # only the card's pictures are served
    for text, probabilities in zip(TEXTS, shown):
        expected = predict_csv(run_dir, tmp_path, {"text": text})
        assert list(expected) == TEXT_LABELS
        assert_same_probabilities(probabilities, expected)
    assert np.abs(np.subtract(list(shown[0].values()), list(shown[1].values()))).max() > 100 * ATOL
    assert snapshot(run_dir) == before  # the page reads the run, never writes to it


@pytest.mark.slow
def test_the_api_scores_a_knowledge_model_with_its_knowledge_columns(runs, tmp_path):
    pytest.importorskip("gradio_client")
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    run_dir = runs.case("knowledge")
    rows = [json.loads(line) for line in write_knowledge_dataset(tmp_path / "rows.jsonl", repeat=1).open()][:4]
    knowledge = [{column: row[column] for column in ("entities", "entity_id", "features")} for row in rows]
    with served(run_dir) as url:
        client = Client(url, verbose=False)
        shown = [api_probabilities(client, row["text"], json.dumps(k)) for row, k in zip(rows, knowledge)]
        with pytest.raises(AppError, match=r"needs the knowledge column\(s\) \['features', 'entity_id', 'entities'\]"):
            client.predict("the film was good", "{}", api_name="/predict")
    for row, extra, probabilities in zip(rows, knowledge, shown):
        expected = predict_csv(run_dir, tmp_path, {"text": row["text"], **extra})
        assert list(expected) == ["negative", "positive"]
        assert_same_probabilities(probabilities, expected)
    assert np.ptp(np.array([list(p.values()) for p in shown]), axis=0).max() > 100 * ATOL


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["timm", "image_head"])
def test_the_api_returns_predicts_probabilities_for_an_uploaded_image(runs, kind, tmp_path):
    pytest.importorskip("gradio_client")
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from ftpeft.app.scoring import load_scorer

    run_dir, images = runs.case(kind), runs.test_images()
    assert len(images) == len(CLASSES)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with served(run_dir) as url:
        client = Client(url, verbose=False)
        shown = [api_probabilities(client, handle_file(str(image))) for image in images]
        with pytest.raises(AppError, match="(?s)image.*Truncated File Read"):  # gradio's reader refuses it first
            client.predict(handle_file(str(broken)), api_name="/predict")
    scorer = load_scorer(run_dir)  # called directly, the scorer refuses it too, and a text
    with pytest.raises(FtpeftError, match="cannot read the image: .*Truncated File Read"):
        scorer.score_image(broken)
    with pytest.raises(FtpeftError, match="is an image model; give it an image"):
        scorer.score_text(["the film was good"])
    for image, probabilities in zip(images, shown):
        expected = predict_csv(run_dir, tmp_path, image=image)
        assert list(expected) == list(CLASSES)
        assert_same_probabilities(probabilities, expected)
    assert np.ptp(np.array([list(p.values()) for p in shown]), axis=0).max() > 100 * ATOL


# --- the page in headless Chromium ---------------------------------------------------------------------------


@contextlib.contextmanager
def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def shown_probabilities(driver, previous: dict | None = None, timeout: float = 60) -> dict:
    """Label -> probability as the page shows it: each bar's <meter value> (the bar chart), once the bars differ from
    ``previous``; the percentage printed next to each bar must be that value, rounded."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def read(driver):
        bars = driver.find_elements(By.CSS_SELECTOR, "#ftpeft-probabilities .confidence-set")
        values = {}
        for bar in bars:
            name = bar.find_element(By.CSS_SELECTOR, "dt").text
            value = float(bar.find_element(By.CSS_SELECTOR, "meter").get_attribute("value"))
            percent = bar.find_element(By.CSS_SELECTOR, "dd").text
            assert percent == f"{round(value * 100)}%", (name, value, percent)
            values[name] = value
        return values if values and values != previous else False

    return WebDriverWait(driver, timeout).until(read)


browser = pytest.mark.skipif(
    not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()),
    reason=f"needs Debian's headless browser: {CHROMIUM} and {CHROMEDRIVER} "
    "(apt-get install chromium chromium-driver; .ci/run installs them)",
)


@pytest.mark.slow
@browser
def test_a_text_typed_in_the_browser_shows_predicts_probabilities_and_the_model_card(runs, tmp_path):
    pytest.importorskip("selenium")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    run_dir = runs.case("text")
    with served(run_dir) as url, chromium() as driver:
        driver.get(url)
        box = WebDriverWait(driver, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "#ftpeft-text-0 textarea"))
        card = driver.find_element(By.ID, "ftpeft-card").text
        curve = driver.find_element(By.CSS_SELECTOR, "#ftpeft-card img[alt='learning curve']")
        WebDriverWait(driver, 30).until(lambda d: d.execute_script("return arguments[0].naturalWidth > 0;", curve))
        shown, previous = [], None
        for text in TEXTS:
            box.clear()
            box.send_keys(text)
            driver.find_element(By.ID, "ftpeft-predict").click()
            previous = shown_probabilities(driver, previous)
            shown.append(previous)
    assert "Fine-tuned from" in card and "library_name" not in card  # the card's text, without its YAML header
    for text, probabilities in zip(TEXTS, shown):
        assert_same_probabilities(probabilities, predict_csv(run_dir, tmp_path, {"text": text}))


@pytest.mark.slow
@browser
def test_an_image_uploaded_in_the_browser_shows_predicts_probabilities(runs, tmp_path):
    pytest.importorskip("selenium")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    run_dir, image = runs.case("timm"), runs.test_images()[0]
    with served(run_dir) as url, chromium() as driver:
        driver.get(url)
        upload = WebDriverWait(driver, 60).until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#ftpeft-image input[type=file]")
        )
        upload.send_keys(str(image))
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#ftpeft-image img"))
        driver.find_element(By.ID, "ftpeft-predict").click()
        shown = shown_probabilities(driver)
    expected = predict_csv(run_dir, tmp_path, image=image)
    assert list(expected) == list(CLASSES)
    assert_same_probabilities(shown, expected)


def test_the_documented_commands_parse():
    import shlex

    page = (ROOT / "docs" / "recipes" / "predict_app_push.md").read_text()
    section = page.split("## Try it in a page: `ftpeft app`\n", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#")[0] for line in section.splitlines() if line.startswith("ftpeft app ")]
    assert len(commands) == 2
    for command in commands:
        args = cli._parser().parse_args(shlex.split(command)[1:])
        assert args.command == "app" and args.output_dir.startswith("outputs/") and not args.share
