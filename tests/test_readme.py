"""The README cannot rot: its library example runs, the files and flags it names exist."""

import re

import pytest
from helpers import ROOT

README = (ROOT / "README.md").read_text()


def test_library_example_runs(tmp_path, monkeypatch):
    block = README.split("<!-- library-example: run by tests/test_readme.py -->", 1)[1]
    code = block.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102  (the README example runs as written)
    trainer, model = scope["trainer"], scope["model"]
    assert scope["report"].trainable_layers == [3, 4]
    assert {g["lr"] for g in trainer.optimizer.param_groups} >= {1e-3, 5e-5}
    trainable = {p for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == {id(p) for p in trainable}


@pytest.mark.parametrize(
    "path", sorted(set(re.findall(r"(?:recipes|accelerate_configs|scripts)/[\w/]+\.(?:py|yaml|sbatch|sh)", README)))
)
def test_every_file_the_readme_names_exists(path):
    assert (ROOT / path).is_file(), path


def test_the_two_commands_are_there():
    assert 'pip install -e ".[demo]" && accelerate launch recipes/bert_cls.py --unfreeze-last 4' in README
    assert 'pip install -e ".[test]" && python -m pytest -q' in README
    ci = (ROOT / ".ci/run").read_text()
    assert 'pip install -e ".[test]"' in ci and "python -m pytest -q" in ci
