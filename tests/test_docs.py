"""README.md and docs/*.md name only what exists: modules, flags, params fields, files and links.

Each check reads a page's text and returns its problems (one line each, naming the page and what is wrong); the
tests run them over every page and over planted bad texts, so that a check which finds nothing cannot pass unseen.
Nothing here trains: command lines are parsed by the real parser (autotrain.cli.build_parser) without running.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import importlib
import io
import json
import re
import shlex
from functools import cache
from pathlib import Path

import pytest
import yaml

from autotrain.params.seed import NOT_THIS_TOOL

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")
MODULE = re.compile(r"\bautotrain(?:\.[A-Za-z_]\w*)+")
# `--sweep-*`: every flag so named; `--no-NAME` (a placeholder) is no flag.
FLAG = re.compile(r"(?<![\w-])--[a-z](?:[a-z0-9_-]*[a-z0-9])?(?:-\*)?(?![\w-])")
SNAKE = r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
PATH = re.compile(r"^(?:tests|bench|scripts|src|docs)/[\w./-]+$")


def split_page(text: str) -> tuple[list[tuple[str, str]], str]:
    """The fenced code blocks (language, body) and the prose with the blocks taken out."""
    blocks = [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]
    return blocks, FENCE.sub("", text)


@cache
def parser():
    from autotrain.cli import build_parser

    return build_parser()


@cache
def our_flags() -> frozenset[str]:
    """Every flag `aitraining` and its commands take, with the spellings the parser accepts (snake case, earlier
    names of a field)."""
    import argparse

    from autotrain.inference import InferenceParams
    from autotrain.params import LLMTrainingParams
    from autotrain.private import parser_actions

    flags = set()
    stack = [parser()]
    while stack:
        p = stack.pop()
        for action in parser_actions(p):
            flags.update(s for s in action.option_strings if s.startswith("--"))
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
    for schema in (LLMTrainingParams, InferenceParams):
        for field in schema.model_fields:
            for name in schema.names_of(field):
                for spelled in {name, name.replace("_", "-")}:
                    flags.update({f"--{spelled}", f"--no-{spelled}"})
    return frozenset(flags | {f.replace("-", "_") for f in flags if f.startswith("--")})


@cache
def field_names() -> frozenset[str]:
    """Params fields (training and inference) under every name they accept."""
    from autotrain.inference import InferenceParams
    from autotrain.params import LLMTrainingParams

    return frozenset(n for schema in (LLMTrainingParams, InferenceParams) for f in schema.model_fields
                     for n in schema.names_of(f))


@cache
def accelerate_keys() -> frozenset[str]:
    """The keys of the accelerate config a launch writes (scale-out.md names them), for each backend."""
    from autotrain.params import LLMTrainingParams
    from autotrain.run.launch_config import accelerate_config

    keys: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                keys.add(k)
                walk(v)

    for backend in ("ddp", "fsdp", "deepspeed"):
        walk(accelerate_config(LLMTrainingParams(distributed_backend=backend), 2))
    return frozenset(keys)


def check_modules(text: str) -> list[str]:
    """Every dotted `autotrain.x.y` names a module, or an attribute of one."""
    problems = []
    for name in sorted(set(MODULE.findall(text))):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                if not hasattr(obj, attr):
                    problems.append(f"{name}: {'.'.join(parts[:cut])} has no {attr}")
                    break
                obj = getattr(obj, attr)
            break
    return problems


def command_lines(text: str) -> list[str]:
    """Every `aitraining ...` command: a line of a shell block (continuations joined) or an inline code span."""
    blocks, prose = split_page(text)
    lines = [c for c in INLINE.findall(prose) if c.startswith("aitraining ")]
    for lang, body in blocks:
        if lang in ("", "sh", "bash", "shell", "console"):
            for line in body.replace("\\\n", " ").splitlines():
                line = line.strip()
                if line.startswith("aitraining "):
                    lines.append(line)
    return lines


def parse_commands(line: str) -> list[list[str]]:
    """The argv of a command as the docs write it, read as a reader would: a comment, `| head` and `[A | B]`
    (optional; the first alternative is taken) are dropped, and `...` is either any further flags or a value (both
    readings are returned; one must parse)."""
    line = re.sub(r"\s#.*$", "", line)
    line = re.sub(r"\[([^\]]*)\]", lambda m: m.group(1).split(" | ")[0], line)
    line = line.split(" | ")[0]
    readings = []
    for text in {line.replace("...", " "), line.replace("...", "VALUE")}:
        argv = shlex.split(text)[1:]
        if argv and argv[0].startswith("-") and "--config" in argv:  # `aitraining --config FILE`: `llm --train`
            argv = ["llm", "--train", *argv]
        if "--help" in argv or "-h" in argv:  # prints the help and exits 0: the flags before it are checked alone
            argv = [a for a in argv if a not in ("--help", "-h")] + (["--train"] if argv[0] == "llm" else [])
        readings.append(argv)
    return [argv for argv in readings if argv]


def check_commands(text: str) -> list[str]:
    """Each command line parses with the real parser; a `--train` line without a config file also builds its
    params (the cross-field rules: a LoRA flag without --peft fails here)."""
    from autotrain.cli import params_from_args
    from autotrain.errors import AutoTrainError

    problems = []
    for line in command_lines(text):
        parsed = []
        for argv in parse_commands(line):
            try:
                with contextlib.redirect_stderr(io.StringIO()):
                    parsed.append(parser().parse_args(argv))
            except SystemExit:
                pass
        if not parsed:
            problems.append(f"does not parse: {line}")
            continue
        args = parsed[0]
        if getattr(args, "train", False) and "config" not in args:
            try:
                params_from_args(args)
            except AutoTrainError as exc:
                problems.append(f"refused: {line}: {exc}")
    return problems


def foreign_flags(text: str) -> set[str]:
    """Flags of the other commands a page shows in full (accelerate, torchrun, pip, a bench script): a page may
    then name them alone."""
    blocks, prose = split_page(text)
    commands = [c for c in INLINE.findall(prose) if " --" in c] + [
        line for _, body in blocks for line in body.replace("\\\n", " ").splitlines()]
    return {f for c in commands if not c.strip().startswith("aitraining") for f in FLAG.findall(c)}


def check_flags(text: str) -> list[str]:
    """A flag named in code (a span starting with it, or any flag of an `aitraining` command) is one of ours, or
    one of a command the page shows in full."""
    _, prose = split_page(text)
    named = {FLAG.match(c).group(0) for c in INLINE.findall(prose) if FLAG.match(c)}
    for line in command_lines(text):
        named.update(FLAG.findall(line.split(" #")[0]))
    known = our_flags() | foreign_flags(text)
    return [f"unknown flag {flag}" for flag in sorted(named) if flag.split("=")[0] not in known
            and not (flag.endswith("*") and any(k.startswith(flag[:-1]) for k in known))]


def check_fields(text: str) -> list[str]:
    """Field names where the docs write a setting: `name: value` or `name=value` in code, YAML keys,
    keyword arguments of LLMTrainingParams(...) in Python; and a snake-case name in code that is nearly a field
    but not one (a typo or a renamed field)."""
    blocks, prose = split_page(text)
    known = field_names() | accelerate_keys()
    problems = []
    for code in INLINE.findall(prose):
        setting = re.match(rf'^"?({SNAKE})"?(?:: |=)', code)
        if setting and setting.group(1) not in known:
            problems.append(f"`{code}`: {setting.group(1)} is no params field")
        if re.fullmatch(SNAKE, code) and code not in known:
            close = difflib.get_close_matches(code, field_names(), n=1, cutoff=0.9)
            if close and code not in NOT_THIS_TOOL:  # a field of aitraining's other trainers, named as refused
                problems.append(f"`{code}`: no such field (did you mean {close[0]}?)")
    for lang, body in blocks:
        if lang == "yaml":
            data = yaml.safe_load(body)
            for key in data if isinstance(data, dict) else []:
                if key != "<<" and not key.startswith("x-") and key.replace("-", "_") not in field_names():
                    problems.append(f"yaml key {key} is no params field")
        if lang == "python":
            try:
                tree = ast.parse(body)
            except SyntaxError:  # check_blocks reports it
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "LLMTrainingParams":
                    problems += [f"LLMTrainingParams({k.arg}=...): no such field" for k in node.keywords
                                 if k.arg and k.arg not in field_names()]
    return problems


def check_blocks(text: str, tmp_path: Path) -> list[str]:
    """Python blocks compile and their imports exist; YAML blocks load through the real config reader; JSON
    blocks parse."""
    from autotrain.cli import params_from_args
    from autotrain.errors import AutoTrainError

    problems = []
    for n, (lang, body) in enumerate(split_page(text)[0]):
        if lang == "python":
            try:
                tree = ast.parse(body)
                compile(tree, "<docs>", "exec")
            except SyntaxError as exc:
                problems.append(f"python block does not compile: {exc}")
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module:
                    problems += check_modules(" ".join(f"{node.module}.{a.name}" for a in node.names))
                if isinstance(node, ast.Import):
                    problems += check_modules(" ".join(a.name for a in node.names))
        if lang == "yaml":
            path = tmp_path / f"block{n}.yml"
            path.write_text(body)
            try:
                params_from_args(parser().parse_args(["llm", "--train", "--config", str(path)]))
            except (AutoTrainError, SystemExit) as exc:
                problems.append(f"yaml block refused: {exc}")
        if lang == "json":
            try:
                json.loads(body)
            except ValueError as exc:
                problems.append(f"json block does not parse: {exc}")
    for code in INLINE.findall(split_page(text)[1]):  # a row written inline (README's shapes), unless elided
        if code.startswith('{"') and '": ' in code and "..." not in code:
            try:
                json.loads(code)
            except ValueError as exc:
                problems.append(f"`{code}` is no JSON: {exc}")
    return problems


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    _, prose = split_page(path.read_text())
    return {slug(m) for m in re.findall(r"^#+ (.+)$", prose, re.M)}


def check_links(text: str, page: Path) -> list[str]:
    """Relative links and images resolve (a `#anchor` to a heading of the page it names); code spans naming a
    file of the repository (`tests/...`, `src/...`) name one that exists."""
    blocks, prose = split_page(text)
    problems = []
    for target in LINK.findall(prose):
        if re.match(r"^[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            problems.append(f"link {target}: {file} does not exist")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            problems.append(f"link {target}: no heading #{anchor} in {path.name}")
    for code in INLINE.findall(prose):
        name = code.split()[-1] if code.startswith(("pytest", "python ")) else code
        if PATH.match(name) and not (ROOT / name).exists():
            problems.append(f"`{code}`: {name} does not exist")
    return problems


def problems_of(page: Path, text: str, tmp_path: Path) -> list[str]:
    return [f"{page.name}: {p}" for p in (check_modules(text) + check_commands(text) + check_flags(text)
                                          + check_fields(text) + check_blocks(text, tmp_path)
                                          + check_links(text, page))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_names_only_what_exists(page: Path, tmp_path: Path):
    assert problems_of(page, page.read_text(), tmp_path) == []


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move the depth into docs/"


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    assert [p.name for p in PAGES[1:] if f"](docs/{p.name})" not in readme] == []


def test_each_docs_page_says_what_a_user_does_there():
    for page in PAGES[1:]:
        lines = page.read_text().splitlines()
        assert lines[0].startswith("# ") and lines[1] == "" and lines[2], page.name  # a title, then a sentence


BAD = {
    "module": "Call `autotrain.launch.accelerate_config(params, N)`.",
    "attribute": "Call `autotrain.run.launch.write_accelerate_config(config, path)`.",
    "flag in prose": "Set `--lora-rank 8` with `--peft`.",
    "flag in a command": "```sh\naitraining llm --train --peft --lora-rank 8\n```\n",
    "rule across flags": "```sh\naitraining llm --train --lora-r 8\n```\n",
    "setting in prose": "Write `lora_rank: 8` in the file.",
    "near field": "The `gradient_acumulation` setting.",
    "yaml key": "```yaml\npeft: true\nlora_rank: 8\n```\n",
    "python keyword": "```python\nLLMTrainingParams(lora_rank=8)\n```\n",
    "python import": "```python\nfrom autotrain.run.launch import write_accelerate_config\n```\n",
    "python syntax": "```python\nLLMTrainingParams(peft=True\n```\n",
    "json": "```json\n{\"prompt\": \"2+2?\", \"chosen\": \"4\",}\n```\n",
    "inline json": "A row: `{\"prompt\": \"2+2?\", \"chosen\": 4\"}`.",
    "link": "See [the data page](docs/nothing-here.md).",
    "anchor": "See [Data](docs/data.md#no-such-heading).",
    "file": "Run `pytest -s tests/test_no_such_file.py`.",
}


@pytest.mark.parametrize("kind", BAD)
def test_a_planted_bad_name_is_flagged(kind: str, tmp_path: Path):
    good = ("Use `autotrain.run.launch_config.accelerate_config` and `--lora-r 8` with `--peft`; `lora_r: 8`.\n"
            "```sh\naitraining llm --train --peft --lora-r 8\n```\nSee [Data](docs/data.md#data).\n")
    assert problems_of(ROOT / "README.md", good, tmp_path) == []
    assert problems_of(ROOT / "README.md", good + BAD[kind], tmp_path) != [], kind


@pytest.mark.parametrize("page", ["ARCHITECTURE.md", "BENCHMARKS.md", "bench/README.md"])
def test_the_other_pages_name_modules_that_exist(page: str):
    assert check_modules((ROOT / page).read_text()) == []


def source_paths(text: str) -> set[str]:
    """`params/sections.py`, `data/`, `train/methods/<name>.py`: ARCHITECTURE.md's paths under src/autotrain/."""
    return {path for path in re.findall(r"`((?:[a-z_]+/)*[a-z_]+(?:\.py|/))`", text)}


def test_architecture_names_paths_that_exist():
    package = ROOT / "src" / "autotrain"
    paths = source_paths((ROOT / "ARCHITECTURE.md").read_text())
    assert "model/kernels.py" in paths and "params/" in paths  # the reader finds them at all
    missing = sorted(p for p in paths if not any((base / p).exists() for base in (package, package.parent, ROOT)))
    assert not missing, f"ARCHITECTURE.md names paths that do not exist: {missing}"
    assert source_paths("`model/nowhere.py`") == {"model/nowhere.py"}
