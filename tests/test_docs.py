"""Docs cannot rot: every command the docs show goes through its entry point's own parser, without training.

Where commands are read: ```bash blocks and inline `code` that starts a command in README.md, docs/**/*.md and
benchmarks/README.md; the indented example lines of the accelerate_configs/ headers (YAML and sbatch) and of the
recipes' docstrings. A command is split as the shell splits it (quotes, backslash continuations, ``# comments``,
``&&`` / ``;`` / ``|``, ``VAR=value`` prefixes), and each part that runs an entry point is parsed:

- ``python recipes/X.py ARGS``: recipes/X.py's own ``parse(ARGS)``;
- ``ftpeft SUB ARGS``, ``python -m ftpeft.cli SUB ARGS``: ``ftpeft.cli.parse`` (the ladder's, predict's, push's or
  app's parser);
- ``accelerate launch [LAUNCH FLAGS] SCRIPT ARGS``: accelerate's own launch parser (and its --config_file must
  exist), then SCRIPT ARGS as above; a launcher fragment that names no script has only its flags checked;
- ``[RECIPE=...] sbatch [OPTS] accelerate_configs/slurm/T.sbatch ARGS``: the template runs with stand-in
  srun/scontrol/accelerate, and the ``accelerate launch`` line it gives the first node is parsed as above.

``...`` (more flags) is dropped; PLACEHOLDERS that must be typed (``--num_processes N``) get a value. Parsing reads
no data and loads no model; the one file a parser reads is ``--config``'s YAML, and a YAML that a run writes
stands in as RUN_OUTPUTS says. A command that no longer parses fails with the command and the parser's error.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import ROOT, load_recipe, slurm_stand_ins

from ftpeft.core.errors import FtpeftError

MARKDOWN = [ROOT / "README.md", *sorted(ROOT.glob("docs/**/*.md")), ROOT / "benchmarks/README.md"]
HEADERS = sorted(ROOT.glob("accelerate_configs/**/*.yaml")) + sorted(ROOT.glob("accelerate_configs/**/*.sbatch"))
RECIPE_FILES = sorted((ROOT / "recipes").glob("*.py"))

# what starts a command in inline `code`, a header comment or a docstring (after any VAR=value prefixes)
COMMAND_START = re.compile(
    r"(?:[A-Za-z_]\w*=\S*\s+)*(?:python3? (?:recipes/|-m ftpeft)|accelerate launch|ftpeft |sbatch )"
)
SHELL_FENCES = {"bash", "sh", "shell", "zsh"}
OPERATORS = {"&&", "||", ";", "|", "&"}
ELIDED = {"...", "…"}  # "and more flags": dropped
PLACEHOLDERS = {"N": "2", "R": "0"}  # placeholders argparse types (--num_processes N, --machine_rank R)
# files a parser reads (--config) that a run writes: path -> the stand-in's YAML text, and why it is fine
RUN_OUTPUTS = {
    "outputs/bert_cls/best.yaml": ("{}\n", "written by --hp_search; test_hp_search.py reruns a real one"),
}


@dataclass
class DocCommand:
    """One command of the docs: where it is (file:line), its text, and its words after VAR=value prefixes."""

    where: str
    text: str
    words: list[str]
    env: dict[str, str] = field(default_factory=dict)


# --- reading commands out of the docs ---------------------------------------------------------------------------


def markdown_snippets(text: str) -> list[tuple[int, str]]:
    """(line, shell text) of each logical line of the ```bash blocks and of each inline `code` span that starts a
    command (a span may run over a line break); fenced blocks of other languages are skipped."""
    snippets, prose, fence = [], [], None
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip().lower()
            prose.append("")
            continue
        if fence is None:
            prose.append(line)
        else:
            prose.append("")
            if fence in SHELL_FENCES:
                snippets.append((number, line))
    snippets = join_continuations(snippets)
    flat = "\n".join(prose)
    for span in re.finditer(r"`([^`]+)`", flat):
        content = " ".join(span.group(1).split())
        if "\n\n" not in span.group(1) and COMMAND_START.match(content):
            snippets.append((flat.count("\n", 0, span.start()) + 1, content))
    return sorted(snippets, key=lambda snippet: snippet[0])  # by line; spans of one line in their order


def join_continuations(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Join lines that end in a backslash with the next; each logical line keeps its first line's number."""
    joined: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, line in lines:
        start, text = pending if pending else (number, "")
        text += line
        if text.rstrip().endswith("\\"):
            pending = (start, text.rstrip()[:-1] + " ")
        else:
            joined.append((start, text))
            pending = None
    if pending:
        joined.append(pending)
    return joined


def comment_snippets(text: str) -> list[tuple[int, str]]:
    """The indented example lines of a file's ``#`` comments (``#   accelerate launch ... \\`` and what follows)."""
    examples = [(n, m.group(1)) for n, line in enumerate(text.splitlines(), 1) if (m := re.match(r"#\s{2,}(.*)", line))]
    return [(n, s) for n, s in join_continuations(examples) if COMMAND_START.match(s)]


def docstring_snippets(text: str) -> list[tuple[int, str]]:
    """The indented command lines of a module docstring (a recipe's usage block), as Python reads the docstring."""
    module = ast.parse(text)
    lines = enumerate(ast.get_docstring(module, clean=False).splitlines(), module.body[0].lineno)
    indented = [(n, line.strip()) for n, line in lines if line.startswith("    ")]
    return [(n, s) for n, s in join_continuations(indented) if COMMAND_START.match(s)]


def shell_words(text: str) -> list[str]:
    """The words the shell would see, operators (``&&``, ``|``, ...) as words of their own, comments dropped;
    a ``<name>`` placeholder is the word ``name``."""
    text = re.sub(r"<(\w+)>", r"\1", text)  # a <placeholder> is a word to the reader, not a redirection
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def split_commands(where: str, text: str) -> list[DocCommand]:
    """The commands of one shell line that run an entry point (``pip install ... &&`` and the like are left out)."""
    commands, current = [], []
    for word in [*shell_words(text), ";"]:
        if word not in OPERATORS:
            current.append(word)
            continue
        env = {}
        while current and re.match(r"[A-Za-z_]\w*=", current[0]):
            name, value = current.pop(0).split("=", 1)
            env[name] = value
        words = [PLACEHOLDERS.get(w, w) for w in current if w not in ELIDED]
        if runs_entry_point(words):
            commands.append(DocCommand(where, text.strip(), words, env))
        current = []
    return commands


def runs_entry_point(words: list[str]) -> bool:
    """A command that runs a recipe or ``ftpeft`` with arguments (a bare ``ftpeft ladder`` in prose names it)."""
    if words[:1] in (["python"], ["python3"]) and len(words) > 1:
        return words[1].startswith("recipes/") or (
            words[1] == "-m" and len(words) > 2 and words[2].startswith("ftpeft")
        )
    if words[:1] == ["ftpeft"]:
        return len(words) > 2
    return (words[:2] == ["accelerate", "launch"] and len(words) > 2) or words[:1] == ["sbatch"]


def collect() -> list[DocCommand]:
    sources = [(p, markdown_snippets) for p in MARKDOWN if p.is_file()]
    sources += [(p, comment_snippets) for p in HEADERS] + [(p, docstring_snippets) for p in RECIPE_FILES]
    commands, seen = [], {}
    for path, snippets in sources:
        for line, text in snippets(path.read_text()):
            for command in split_commands(f"{path.relative_to(ROOT)}:{line}", text):
                seen[command.where] = seen.get(command.where, 0) + 1
                if seen[command.where] > 1:  # a second command on the same line
                    command.where += f"#{seen[command.where]}"
                commands.append(command)
    return commands


COMMANDS = collect()


# --- parsing each command with its entry point's own parser -----------------------------------------------------


class NotParsed(Exception):
    """A command its parser refuses, or that names no entry point: the one line to show."""


@functools.cache
def recipe(script: str):
    path = ROOT / script
    if path.parent != ROOT / "recipes" or not path.is_file():
        raise NotParsed(f"{script}: no such recipe")
    return load_recipe(path.stem)


def parse_script(script: str, argv: list[str], module: bool = False) -> None:
    """recipes/X.py's ``parse``, or (``module``: ``-m ftpeft.cli`` / the ``ftpeft`` script) ``ftpeft.cli.parse``."""
    from ftpeft.cli import parse as parse_ftpeft

    if module and script != "ftpeft.cli":
        raise NotParsed(f"-m {script}: the ftpeft command is -m ftpeft.cli")
    try:
        if module:
            parse_ftpeft(argv)
        else:
            recipe(script).parse(argv)
    except SystemExit as exit:  # --help prints and exits 0
        if exit.code:
            raise NotParsed(f"{script} exited {exit.code}") from None


def parse_launch(argv: list[str]) -> None:
    """accelerate's own parser for the launcher flags, then the script's parser for the rest."""
    from accelerate.commands.launch import launch_command_parser

    names_script = any(w.endswith(".py") for w in argv) or "-m" in argv or "--module" in argv
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = launch_command_parser().parse_args(argv if names_script else [*argv, "SCRIPT"])
    except SystemExit:
        raise NotParsed(stderr.getvalue().strip().splitlines()[-1]) from None
    if args.config_file and not (ROOT / args.config_file).is_file():
        raise NotParsed(f"--config_file {args.config_file}: no such file")
    if names_script:
        parse_script(args.training_script, args.training_script_args, module=args.module)


def parse_sbatch(words: list[str], env: dict[str, str], tmp_path: Path) -> None:
    """Run the template with stand-ins for srun/scontrol/accelerate; parse the launch line of its first node."""
    at = next((i for i, w in enumerate(words) if w.endswith(".sbatch")), None)
    if at is None or not (ROOT / words[at]).is_file():
        raise NotParsed("sbatch: no template of accelerate_configs/slurm named")
    log = tmp_path / "launch.txt"
    record = '#!/bin/bash\n[ -e "$LAUNCH_LOG" ] || printf "%s\\n" "$@" > "$LAUNCH_LOG"\n'
    env = {**slurm_stand_ins(tmp_path / "bin", accelerate=record), "LAUNCH_LOG": str(log), **env}
    script = [str(ROOT / words[at]), *words[at + 1 :]]
    result = subprocess.run(["bash", *script], check=False, env=env, cwd=ROOT, capture_output=True, text=True)
    if result.returncode or not log.is_file():
        raise NotParsed(f"the template exited {result.returncode}: {result.stderr.strip()[-300:]}")
    launch, *argv = log.read_text().splitlines()
    assert launch == "launch"
    parse_launch(argv)


def parse_command(command: DocCommand, tmp_path: Path) -> None:
    """Parse ``command`` as its first word runs it; raises FtpeftError or NotParsed when it does not parse."""
    words = [stand_in(w, tmp_path) for w in command.words]
    if words[0] == "sbatch":
        return parse_sbatch(words, command.env, tmp_path)
    if words[:2] == ["accelerate", "launch"]:
        return parse_launch(words[2:])
    if words[0] == "ftpeft":
        return parse_script("ftpeft.cli", words[1:], module=True)
    if words[1] == "-m":
        return parse_script(words[2], words[3:], module=True)
    return parse_script(words[1], words[2:])


def stand_in(word: str, tmp_path: Path) -> str:
    """``word``, or for a file of RUN_OUTPUTS the path of its stand-in, written under ``tmp_path``."""
    if word not in RUN_OUTPUTS:
        return word
    path = tmp_path / word
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(RUN_OUTPUTS[word][0])
    return str(path)


@pytest.fixture
def restored_environ():
    """Parsing sets variables (ACCELERATE_USE_CPU on CPU ranks, accelerate's from TrainingArguments): undo them."""
    saved = dict(os.environ)
    yield
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    os.environ.update(saved)


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_every_documented_command_parses(command, tmp_path, restored_environ):
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            parse_command(command, tmp_path)
    except (FtpeftError, NotParsed) as error:
        pytest.fail(f"{command.where}: {command.text}\n-> {error}", pytrace=False)


# --- the reader itself ------------------------------------------------------------------------------------------


def test_the_reader_splits_as_the_shell_does():
    markdown = (
        "Run `python recipes/bert_cls.py --unfreeze-last 2\n--hp_search 6` or `ftpeft ladder` (a name).\n"
        "```bash\n"
        'pip install -e ".[demo]" && FOO=1 accelerate launch --multi_gpu --num_processes 2 \\\n'
        "    recipes/bert_cls.py --output_dir OUTPUT_DIR ...   # a comment\n"
        "python -c 'print(1)'; ftpeft predict out --input 'my file.csv' --output preds.csv\n"
        "```\n"
        "```python\npython recipes/not_shell.py\n```\n"
    )
    commands = [cmd for line, text in markdown_snippets(markdown) for cmd in split_commands(f"x:{line}", text)]
    assert [(c.where, c.words, c.env) for c in commands] == [
        ("x:1", ["python", "recipes/bert_cls.py", "--unfreeze-last", "2", "--hp_search", "6"], {}),
        (
            "x:4",
            ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "recipes/bert_cls.py"]
            + ["--output_dir", "OUTPUT_DIR"],
            {"FOO": "1"},
        ),
        ("x:6", ["ftpeft", "predict", "out", "--input", "my file.csv", "--output", "preds.csv"], {}),
    ]


def test_a_renamed_flag_fails_with_the_parsers_line(tmp_path, restored_environ):
    (command,) = split_commands("x:1", "accelerate launch recipes/bert_cls.py --unfreez-last 2")
    with pytest.raises(FtpeftError, match=r"unknown argument\(s\): \['--unfreez-last', '2'\]"):
        parse_command(command, tmp_path)
    (command,) = split_commands("x:1", "accelerate launch --num_proceses 2 recipes/bert_cls.py")
    with pytest.raises(NotParsed, match="unrecognized arguments"):
        parse_command(command, tmp_path)
    (command,) = split_commands("x:1", "sbatch accelerate_configs/slurm/ddp.sbatch --unfreez-last 2")
    with pytest.raises(FtpeftError, match="--unfreez-last"):
        parse_command(command, tmp_path / "ddp")
    (command,) = split_commands("x:1", "RECIPE=recipes/gone.py sbatch accelerate_configs/slurm/ddp.sbatch")
    with pytest.raises(NotParsed, match="recipes/gone.py: no such recipe"):
        parse_command(command, tmp_path / "gone")


def entry_point(command: DocCommand) -> str:
    """What a command runs: recipes/X.py, ``ftpeft SUB``, or (a launcher fragment, sbatch's default) its first word."""
    words = command.words
    if "ftpeft" in words[:1] or "ftpeft.cli" in words:
        return f"ftpeft {words[words.index('ftpeft' if words[0] == 'ftpeft' else 'ftpeft.cli') + 1]}"
    return next((w for w in words if w.startswith("recipes/") and w.endswith(".py")), words[0])


def test_the_readme_shows_every_recipe():
    shown = {entry_point(c) for c in COMMANDS if c.where.startswith("README.md:")}
    assert {f"recipes/{p.name}" for p in RECIPE_FILES} <= shown, shown


# --- generated tables and the Python blocks ----------------------------------------------------------------------


@functools.cache
def gen_docs():
    """scripts/gen_docs.py as a module: it writes the flag, default and results tables the docs show."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts/gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_docs"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "path", [p for p in MARKDOWN if p.is_file() and "<!-- generated:" in p.read_text()], ids=lambda p: p.name
)
def test_generated_blocks_are_what_the_generator_writes_now(path):
    text = path.read_text()
    stale = [
        match.group("name")
        for match in gen_docs().BLOCK.finditer(text)
        if match.group("body") != gen_docs().render(match.group("name")) + "\n"
    ]
    assert not stale, f"{path.relative_to(ROOT)}: stale generated block(s) {stale}; run python scripts/gen_docs.py"


def test_the_reference_table_is_what_the_results_files_give():
    reference = ROOT / "benchmarks/results/reference.md"
    assert reference.read_text() == gen_docs().reference_markdown(), "run python scripts/gen_docs.py"


def test_every_results_file_is_read_by_the_reference(tmp_path, monkeypatch):
    generator = gen_docs()
    new = tmp_path / "new.json"
    new.write_text('{"rows": []}')
    monkeypatch.setattr(generator, "RESULTS", tmp_path)
    with pytest.raises(KeyError, match="new.json: neither the shared schema nor in LEGACY"):
        generator.reference_figures()


def test_a_results_file_in_the_shared_schema_becomes_a_row(tmp_path, monkeypatch):
    generator = gen_docs()
    result = {
        "setting": {"recipe": "bert_cls", "tuning": "top 2 layers", "data": "demo", "size": "2,000 tweets"}
        | {"epochs": "auto", "seeds": "42-44"},
        "date": "2026-12-07",
        "machine": "1 GPU",
        "load": "idle",
        "command": "python recipes/bert_cls.py --unfreeze-last 2",
        "figures": {"val_accuracy": 0.9, "test_accuracy": [0.88, 0.01]},
        "headline": "test_accuracy",
    }
    (tmp_path / "new.json").write_text(__import__("json").dumps({"results": [result]}))
    monkeypatch.setattr(generator, "RESULTS", tmp_path)
    (figure,) = generator.reference_figures()
    assert (figure.figure, figure.date, figure.machine, figure.headline) == (
        "test accuracy 0.880 ± 0.010",
        "2026-12-07",
        "1 GPU, load idle",
        True,
    )


def test_a_flag_table_follows_the_dataclass():
    table = gen_docs().render("flags:TuningArguments:head_lr,lora_lr")
    rows = table.splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == ["| `--head_lr`", "| `--lora_lr`"]
    assert "| `2e-3` |" in rows[1]  # the default as a flag is written, not 0.002
    with pytest.raises(KeyError, match="no field"):
        gen_docs().render("flags:TuningArguments:no_such_flag")


def test_the_lora_config_uses_the_validated_lrs():
    """recipes/configs/bert_cls/lora.yaml writes out the text recipe's LRs (checked for LoRA in lora_defaults.md)."""
    import yaml

    config = yaml.safe_load((ROOT / "recipes/configs/bert_cls/lora.yaml").read_text())
    defaults = recipe("recipes/bert_cls.py").DEFAULTS
    assert (config["learning_rate"], config["head_lr"]) == (defaults["learning_rate"], defaults["head_lr"])


PYTHON_BLOCK = re.compile(r"(?P<marker><!-- [^>]*-->\n)?```python\n(?P<code>.*?)```", re.DOTALL)
DISPLAY_ONLY = (
    "<!-- display-only"  # a block that shows code but cannot run on its own says so: <!-- display-only: why -->
)


def python_blocks() -> list[tuple[str, str]]:
    """(file:line, code) of every ```python block of docs/ and benchmarks/README.md not marked display-only (the
    README's one block is run by tests/test_readme.py)."""
    blocks = []
    for path in MARKDOWN[1:]:
        if not path.is_file():
            continue
        text = path.read_text()
        for match in PYTHON_BLOCK.finditer(text):
            if not (match.group("marker") or "").startswith(DISPLAY_ONLY):
                line = text.count("\n", 0, match.start("code")) + 1
                blocks.append((f"{path.relative_to(ROOT)}:{line}", match.group("code")))
    return blocks


@pytest.mark.parametrize("where, code", python_blocks(), ids=[w for w, _ in python_blocks()])
def test_every_python_block_runs(where, code, tmp_path, monkeypatch, restored_environ):
    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, where, "exec"), {})  # noqa: S102  (the docs' example runs as written)
