"""`ftpeft app`: the page shows `ftpeft predict`'s probabilities, through its HTTP API (gradio_client) and in a
real browser (headless Debian Chromium driven by selenium), for a trained text model, a LoRA adapter and a timm
image model.

The reference is always `ftpeft predict` on a one-row file (or a one-image folder) holding the same input.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import CLASSES, ROOT, TIMM_ARGS, load_recipe, snapshot, tiny_args, write_class_folders

from ftpeft import cli

bert_cls = load_recipe("bert_cls")
image_cls = load_recipe("image_cls")

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's chromium + chromium-driver
TEXT_LABELS = ["neg", "pos"]
TEXTS = ["the film was good and lovely", "awful plot , a boring actor"]
ATOL = 1e-9  # the same float64 probabilities, through a CSV, JSON or an HTML attribute


def predict_csv(run_dir: Path, tmp_path: Path, text: str | None = None, image: Path | None = None) -> dict:
    """Label -> probability of one text or one image, from ``ftpeft predict`` (its CSV)."""
    scratch = tmp_path / f"reference{len(list(tmp_path.glob('reference*')))}"
    scratch.mkdir()
    if image is None:
        source = scratch / "input.csv"
        pd.DataFrame({"text": [text]}).to_csv(source, index=False)
    else:
        source = scratch / "images"
        source.mkdir()
        shutil.copy(image, source / image.name)
    assert cli.main(["predict", str(run_dir), "--input", str(source), "--output", str(scratch / "preds.csv")]) == 0
    row = pd.read_csv(scratch / "preds.csv").iloc[0]
    return {name: float(row[name]) for name in row.index[2:]}


def assert_same_probabilities(shown: dict, expected: dict) -> None:
    """Same label names and probabilities (the page lists the most probable first; the CSV in the model's order)."""
    assert sorted(shown) == sorted(expected)
    np.testing.assert_allclose([shown[name] for name in expected], list(expected.values()), rtol=0, atol=ATOL)
    assert sum(shown.values()) == pytest.approx(1.0, abs=1e-9)


# --- runs: each kind trained once per module by its recipe (tiny model, 8 steps at large LRs) --------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert_dir, text_csv_dir):
    tmp, built = tmp_path_factory.mktemp("app_runs"), {}

    def build(kind: str) -> Path:
        if kind not in built:
            out = tmp / kind
            if kind == "timm":
                write_class_folders(tmp / "images" / "train", per_class=4)
                write_class_folders(tmp / "images" / "test", per_class=1)
                argv = ["--image_dir", tmp / "images", *TIMM_ARGS, "--output_dir", out, "--max_steps", "2",
                        "--per_device_train_batch_size", "4", "--save_strategy", "no"]  # fmt: skip
                image_cls.main(list(map(str, argv)))
            else:
                lrs = ["--learning_rate", "0.01", "--head_lr", "0.3", "--lora_lr", "0.05", "--max_steps", "8"]
                lora = ["--use_peft", "--lora_r", "4"] if kind == "adapter" else []
                bert_cls.main(tiny_args(tiny_bert_dir, text_csv_dir, out, *lrs, *lora))
            built[kind] = out
        return built[kind]

    return build


@contextlib.contextmanager
def served(run_dir: Path):
    """``ftpeft app RUN_DIR`` in this process on a free local port; yields the page's URL."""
    from ftpeft.app.page import serve

    page = serve(run_dir, block=False)
    try:
        yield page.local_url
    finally:
        page.close()


def api_probabilities(client, *inputs) -> dict:
    """The predict endpoint's answer (gr.Label's {"label", "confidences"}) as label -> probability."""
    answer = client.predict(*inputs, api_name="/predict")
    return {item["label"]: float(item["confidence"]) for item in answer["confidences"]}


# --- fast: the scorer behind the page, and the command's refusals ------------------------------------------


def test_the_scorer_gives_predicts_probabilities_for_one_text(tiny_bert_dir, tmp_path):
    """An untrained tiny classifier saved with its tokenizer is a text output dir: no training needed here."""
    from ftpeft.app.scoring import load_scorer

    scorer = load_scorer(tiny_bert_dir)
    assert scorer.modality == "text" and scorer.text_columns == ["text"]
    shown = [scorer.score_text([text]) for text in TEXTS]
    for text, probabilities in zip(TEXTS, shown):
        assert_same_probabilities(probabilities, predict_csv(Path(tiny_bert_dir), tmp_path, text=text))
    assert np.abs(np.subtract(list(shown[0].values()), list(shown[1].values()))).max() > 100 * ATOL


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

    run_dir = runs(kind)
    before = snapshot(run_dir)
    with served(run_dir) as url:
        client = Client(url, verbose=False)
        shown = [api_probabilities(client, text) for text in TEXTS]
    for text, probabilities in zip(TEXTS, shown):
        expected = predict_csv(run_dir, tmp_path, text=text)
        assert list(expected) == TEXT_LABELS
        assert_same_probabilities(probabilities, expected)
    assert np.abs(np.subtract(list(shown[0].values()), list(shown[1].values()))).max() > 100 * ATOL
    assert snapshot(run_dir) == before  # the page reads the run, never writes to it


@pytest.mark.slow
def test_the_api_returns_predicts_probabilities_for_an_uploaded_image(runs, tmp_path):
    pytest.importorskip("gradio_client")
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    run_dir = runs("timm")
    images = sorted((run_dir.parent / "images" / "test").rglob("*.jpg"))
    assert len(images) == len(CLASSES)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with served(run_dir) as url:
        client = Client(url, verbose=False)
        shown = [api_probabilities(client, handle_file(str(image))) for image in images]
        with pytest.raises(AppError, match="(?s)image.*Truncated File Read"):  # gradio's reader refuses it first
            client.predict(handle_file(str(broken)), api_name="/predict")
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

    run_dir = runs("text")
    with served(run_dir) as url, chromium() as driver:
        driver.get(url)
        box = WebDriverWait(driver, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "#ftpeft-text-0 textarea"))
        card = driver.find_element(By.ID, "ftpeft-card").text
        shown, previous = [], None
        for text in TEXTS:
            box.clear()
            box.send_keys(text)
            driver.find_element(By.ID, "ftpeft-predict").click()
            previous = shown_probabilities(driver, previous)
            shown.append(previous)
    assert "Fine-tuned from" in card and "library_name" not in card  # the card's text, without its YAML header
    for text, probabilities in zip(TEXTS, shown):
        assert_same_probabilities(probabilities, predict_csv(run_dir, tmp_path, text=text))


@pytest.mark.slow
@browser
def test_an_image_uploaded_in_the_browser_shows_predicts_probabilities(runs, tmp_path):
    pytest.importorskip("selenium")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    run_dir = runs("timm")
    image = min((run_dir.parent / "images" / "test").rglob("*.jpg"))
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


def test_the_readme_commands_parse():
    import shlex

    section = (ROOT / "README.md").read_text().split("## Try the model in a page: ftpeft app\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    commands = [line.split("#")[0] for line in section.splitlines() if line.startswith("ftpeft app ")]
    assert len(commands) == 2
    for command in commands:
        args = cli._parser().parse_args(shlex.split(command)[1:])
        assert args.command == "app" and args.output_dir.startswith("outputs/") and not args.share
