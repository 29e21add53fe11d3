"""The README's commands run as written in a fresh clone.

The convention, stated in the README's "Using it": every fenced block carries a tag. `sh` blocks are
commands that need only a fresh clone with `.venv` built, run from its root in one shell session,
in order (later blocks use the files earlier ones write under runs/); `python` blocks run with
`.venv/bin/python` from the same root. `sh expensive` and `python expensive` blocks need what a
fresh clone lacks (a real data set, a GPU, Docker, a cluster, a running service, Prometheus) or
take minutes. `text` blocks are usage summaries and listings, not commands.

The default suite checks, in a second: every fence has a tag; every `normalcy` command of every
`sh` block, expensive or not, calls the clone's `.venv/bin/normalcy` (or `-m normalcy.cli`) and
parses with normalcy's own parser; every `python` block compiles; every repository path the README
names exists. The slow test runs the cheap blocks, in order, in a copy of the tracked files.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from normalcy.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TAGS = {"sh", "python", "text"}
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "2>", "<"}
# Files the README tells the reader to create; they are not in the repository.
CREATED_BY_THE_READER = {"deploy/docker/normalcy.env"}


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    language: str
    expensive: bool
    text: str


def blocks(readme: str | None = None) -> list[Block]:
    """The fenced blocks of the README, dedented to their fence."""
    lines = (readme or README.read_text()).splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = re.match(r"^(\s*)```(.*)$", lines[i])
        if not opening:
            i += 1
            continue
        indent, words = opening.group(1), opening.group(2).split()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        body = "\n".join(line.removeprefix(indent) for line in lines[i + 1 : end])
        language = words[0] if words else ""
        found.append(Block(i + 1, language, "expensive" in words[1:], body + "\n"))
        i = end + 1
    return found


def normalcy_commands(block: Block) -> list[tuple[str, list[str]]]:
    """(how it is called, its arguments) for each `normalcy` command of a shell block."""
    commands = []
    for line in block.text.replace("\\\n", " ").splitlines():
        if "normalcy" not in line or line.lstrip().startswith("#"):
            continue
        words = shlex.split(line, comments=True)
        for k, word in enumerate(words):
            if word.endswith("/normalcy") or word == "normalcy":
                program, rest = word, words[k + 1 :]
            elif word == "normalcy.cli" and k and words[k - 1] == "-m":
                program, rest = "-m normalcy.cli", words[k + 1 :]
            else:
                continue
            cut = next((j for j, w in enumerate(rest) if w in SHELL_OPERATORS), len(rest))
            commands.append((program, rest[:cut]))
            break
    return commands


def test_every_block_says_what_it_is():
    untagged = [b.line for b in blocks() if b.language not in TAGS]
    assert not untagged, f"README blocks without a tag (sh, python, text) at lines {untagged}"


def test_the_convention_marks_commands_that_need_more_than_a_clone():
    text = "\n".join(b.text for b in blocks() if b.language == "sh" and not b.expensive)
    for needs_more in ("$DATA", "docker", "kubectl", "promtool", "curl", "--device cuda", "make "):
        assert needs_more not in text, f"a cheap block uses {needs_more}: mark it expensive"


SH_COMMANDS = [
    pytest.param(program, argv, id=f"line{block.line}:{' '.join(argv[:2])}")
    for block in blocks()
    if block.language == "sh"
    for program, argv in normalcy_commands(block)
]


def test_the_readme_has_normalcy_commands():
    assert len(SH_COMMANDS) >= 15


@pytest.mark.parametrize(("program", "argv"), SH_COMMANDS)
def test_each_normalcy_command_parses(program, argv):
    # A fresh clone has no `normalcy` on PATH: the commands call the one `make demo` builds.
    assert program in (".venv/bin/normalcy", "-m normalcy.cli")
    try:
        build_parser().parse_args(argv)
    except SystemExit as stopped:
        pytest.fail(f"normalcy {shlex.join(argv)}: exit {stopped.code}")


@pytest.mark.parametrize(
    "block", [b for b in blocks() if b.language == "python"], ids=lambda b: f"line{b.line}"
)
def test_each_python_block_compiles(block):
    compile(block.text, f"README.md:{block.line}", "exec")


def test_every_repository_path_the_readme_names_exists():
    # runs/ and artifacts/ are the reader's own output (ignored by git): a checkout that has run
    # anything holds them, and what the README writes there need not exist.
    top = {
        p.name
        for p in REPO.iterdir()
        if not p.name.startswith(".venv") and p.name not in ("runs", "artifacts")
    }
    text = README.read_text()
    names = set(re.findall(r"`([^`\s]+)`", text))
    for block in blocks(text):
        if block.language == "sh":
            names.update(shlex.split(block.text.replace("\\\n", " "), comments=True))
    missing = []
    for name in sorted(names):
        path = name.rstrip("/").split("=")[-1]
        if path.split("/")[0] not in top or "/" not in path or path in CREATED_BY_THE_READER:
            continue
        options = re.match(r"^(.*)\{(.*)\}(.*)$", path)  # `serving.{json,md}`
        paths = [options[1] + o + options[3] for o in options[2].split(",")] if options else [path]
        missing += [p for p in paths if not any(REPO.glob(p))]
    assert not missing, f"the README names paths that do not exist: {missing}"


# --- running them --------------------------------------------------------------------------------
def fresh_copy(to: Path) -> Path:
    """The tracked files of the working tree (a fresh clone of it) with this checkout's .venv."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: cannot tell a fresh clone's files")
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, to / name)
    (to / ".venv").symlink_to(REPO / ".venv")
    return to


@pytest.mark.slow
def test_the_cheap_blocks_run_as_written_in_a_fresh_copy(tmp_path):
    clone = fresh_copy(tmp_path / "clone")
    cheap = [b for b in blocks() if b.language in ("sh", "python") and not b.expensive]
    assert len(cheap) >= 8
    for block in cheap:
        if block.language == "sh":
            argv = ["bash", "-euo", "pipefail", "-c", block.text]
        else:
            argv = [str(clone / ".venv" / "bin" / "python"), "-c", block.text]
        run = subprocess.run(argv, cwd=clone, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, (
            f"README.md line {block.line} failed ({run.returncode}):\n"
            f"{textwrap.indent(block.text, '  ')}\nstdout:\n{run.stdout[-3000:]}\n"
            f"stderr:\n{run.stderr[-3000:]}"
        )
    assert (clone / "runs" / "results.csv").exists()
