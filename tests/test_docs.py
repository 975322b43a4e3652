"""Every command the documentation shows exists and parses: each script it runs exists and answers `--help`, every
flag it passes is one that script documents, every make target is in the Makefile, every module named for
`python -m` imports, and every config or source file named exists."""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "results" / "README.md",
        *sorted((ROOT / "results").glob("*/README.md"))]
EXTERNAL = {"pip", "tensorboard", "wandb", "git", "tar", "cd", "export", "ray", "nohup", "kill"}
FILE_SUFFIXES = (".py", ".yaml", ".md")


def shown_commands(text: str) -> list[str]:
    """The commands of a page: each line of its ```bash blocks (continuation lines joined) and each inline code
    span that starts with `python ` or `make `."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        commands += [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    commands += re.findall(r"`((?:python|make) [^`]+)`", text)
    return commands


def simple_commands(command: str) -> list[list[str]]:
    """A command line's simple commands (split at && ; | &), comments and environment assignments dropped."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars="&;|")
    lexer.whitespace_split, lexer.commenters = True, "#"
    parts, current = [], []
    for token in lexer:
        if set(token) <= set("&;|"):
            parts.append(current)
            current = []
        else:
            current.append(token.strip("[]"))
    parts.append(current)
    return [[t for i, t in enumerate(part) if not (re.fullmatch(r"[A-Z_]+=.*", t) and i == part.index(t))]
            for part in parts if part]


@cache
def help_text(*script_and_subcommand: str) -> tuple[int, str]:
    completed = subprocess.run([sys.executable, *script_and_subcommand, "--help"], cwd=ROOT, capture_output=True,
                               text=True, timeout=300, env={**os.environ, "COLUMNS": "400"})
    return completed.returncode, completed.stdout + completed.stderr


def problems_of(words: list[str]) -> list[str]:
    program, *args = words
    if Path(program).name.startswith("python"):
        if args[:1] == ["-m"]:
            return [] if importlib.util.find_spec(args[1]) else [f"no module {args[1]}"]
        if not args or args[0] == "-c":
            return []
        script, *args = args
        if not (ROOT / script).is_file():
            return [f"no file {script}"]
        problems = [f"no file {word.split(':')[0]}" for word in args
                    if word.split(":")[0].endswith(FILE_SUFFIXES) and "<" not in word
                    and not (ROOT / word.split(":")[0]).exists()]
        code, text = help_text(script)
        if code != 0:
            return [*problems, f"{script} --help exits {code}"]
        positionals = [word for word in args if not word.startswith("-")]
        for flag in (word.split("=")[0] for word in args if word.startswith("--")):
            if not re.search(re.escape(flag) + r"(?![\w-])", text):
                sub = help_text(script, positionals[0])[1] if positionals else ""
                if not re.search(re.escape(flag) + r"(?![\w-])", sub):
                    problems.append(f"{script} has no option {flag}")
        return problems
    if program == "alphagrad-rl":  # the installed command: its subcommand's module answers --help
        from alphagrad_rl.cli import COMMANDS

        if not args or args[0] not in COMMANDS:
            return [f"no alphagrad-rl command {args[:1]}"]
        code, text = help_text("-m", COMMANDS[args[0]][0])
        return [f"alphagrad-rl {args[0]} has no option {flag}" for flag in (w.split("=")[0] for w in args[1:])
                if flag.startswith("--") and not re.search(re.escape(flag) + r"(?![\w-])", text)] + (
            [f"alphagrad-rl {args[0]} --help exits {code}"] if code else [])
    if program == "make":
        makefile = (ROOT / "Makefile").read_text()
        targets = re.findall(r"^([\w-]+):", makefile, flags=re.M)
        return [f"no make target {target}" for target in args if "=" not in target
                and not any(fnmatch.fnmatchcase(name, target) for name in targets)]  # (reproduce-*: any of them)
    if program in EXTERNAL:
        return []
    return [f"unknown program {program}"]


def test_every_command_the_docs_show_exists_and_parses():
    shown = [(page.relative_to(ROOT), words) for page in DOCS for command in shown_commands(page.read_text())
             for words in simple_commands(command)]
    assert len(shown) > 60  # the pages were read
    scripts = {words[1] for _, words in shown if Path(words[0]).name.startswith("python") and len(words) > 1
               and words[1].endswith(".py")}
    with ThreadPoolExecutor(4) as pool:  # each --help imports torch: a few seconds each
        list(pool.map(help_text, sorted(s for s in scripts if (ROOT / s).is_file())))
    problems = [f"{page}: {' '.join(words)}: {problem}" for page, words in shown for problem in problems_of(words)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("words, problem", [
    (["python", "agents/dqn.py", "--optim.nmae", "adam"], "agents/dqn.py has no option --optim.nmae"),
    (["python", "scripts/nope.py"], "no file scripts/nope.py"),
    (["python", "scripts/sweep.py", "configs/nope.yaml"], "no file configs/nope.yaml"),
    (["make", "reproduce-everything"], "no make target reproduce-everything"),
    (["make", "reproduce-*x"], "no make target reproduce-*x"),
    (["python", "-m", "alphagrad.nope"], "no module alphagrad.nope"),
    (["alphagrad-rl", "swep"], "no alphagrad-rl command ['swep']"),
    (["alphagrad-rl", "sweep", "--dry-runn"], "alphagrad-rl sweep has no option --dry-runn"),
])
def test_the_check_finds_a_wrong_command(words, problem):
    assert problem in problems_of(words)


def test_no_page_tells_the_projects_history():
    """History lives in git: no page narrates development sessions."""
    pages = [*DOCS, *sorted((ROOT / "configs").glob("*.yaml"))]
    told = [f"{page.relative_to(ROOT)}: {line.strip()}" for page in pages for line in page.read_text().splitlines()
            if re.search(r"\bsessions? \d+|\(session\b|since session|\bissue \d+", line, flags=re.I)]
    assert not told, "\n".join(told)


def heading_anchors(page: Path) -> set[str]:
    """The anchors a Markdown page's headings get (GitHub's rule: lower case, punctuation dropped, spaces to '-')."""
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)}


def test_every_relative_link_of_the_docs_leads_to_a_file_and_heading():
    broken = [f"{page.relative_to(ROOT)}: {target}" for page in DOCS
              for target, anchor in re.findall(r"\]\(([^)#\s]+)(?:#([^)]*))?\)", page.read_text())
              if "://" not in target and not ((page.parent / target).exists() and (
                  not anchor or not target.endswith(".md") or anchor in heading_anchors(page.parent / target)))]
    assert not broken, "\n".join(broken)
    assert "on-a-ray-cluster" in heading_anchors(ROOT / "docs" / "sweeps.md")
    assert "ray" not in heading_anchors(ROOT / "docs" / "sweeps.md")  # what the check would have caught
