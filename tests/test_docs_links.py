"""The README, docs/ and results/ pages point at things that exist: every relative link names an
existing file or folder (and an `#anchor` into a markdown page names one of its headings, slugged
as GitHub does), and every `python scripts/...`, `bash scripts/...` and `recipes/....yaml` that a
code span or block of the README or docs/ tells a reader to run names an existing file."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parent.parent
GUIDES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]  # what a reader is told to run
PAGES = [*GUIDES, *sorted((REPO / "results").rglob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
RUN_PATH = re.compile(r"\b(?:python3?|bash)\s+(scripts/[\w./-]+\.(?:py|sh))\b")
RECIPE_PATH = re.compile(r"(?<![\w./-])(recipes/[\w./-]+\.yaml)\b")


def split_code(text: str) -> tuple[list[str], list[str]]:
    """(prose lines with code spans blanked, code: the fenced blocks' lines and the code spans).
    A code span may run over a line break inside its paragraph, as in CommonMark."""
    prose, code, fenced, paragraph = [], [], None, []

    def flush():
        joined = "\n".join(paragraph)
        code.extend(m.group(2).replace("\n", " ") for m in CODE_SPAN.finditer(joined))
        blanked = CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), joined)
        prose.extend(blanked.split("\n") if paragraph else [])
        paragraph.clear()

    for line in text.splitlines():
        mark = FENCE.match(line)
        if fenced is not None:
            if mark and line.strip().startswith(fenced):
                fenced = None
            else:
                code.append(line)
        elif mark:
            flush()
            fenced = mark.group(1)
        elif not line.strip():
            flush()
            prose.append(line)
        else:
            paragraph.append(line)
    flush()
    return prose, code


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text (no markup), lowercased, punctuation
    other than '-' and '_' dropped, each space a '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"(\*+|(?<!\w)_+|_+(?!\w))", "", text)  # emphasis markers, not snake_case
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor in a markdown page; a repeated slug gets -1, -2, ... as on GitHub."""
    prose, _ = split_code(page.read_text())
    seen: dict[str, int] = {}
    out = set()
    for line in prose:
        m = HEADING.match(line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(page: Path) -> list[str]:
    prose, _ = split_code(page.read_text())
    out = []
    for line in prose:
        out += INLINE_LINK.findall(line)
        m = REFERENCE_LINK.match(line)
        if m:
            out.append(m.group(1))
    return out


def broken_links(page: Path) -> list[str]:
    bad = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / unquote(path_part)).resolve() if path_part else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and unquote(anchor).lower() not in anchors(dest):
            bad.append(f"{target}: no heading with that anchor in {dest.relative_to(REPO)}")
    return bad


def _name(page: Path) -> str:
    return str(page.relative_to(REPO))


def test_the_slugs_are_githubs():
    assert github_slug("PPO or GRPO?") == "ppo-or-grpo"
    assert github_slug("The real base: SmolLM2-135M-Instruct, offline (2-core CPU, measured)") == \
        "the-real-base-smollm2-135m-instruct-offline-2-core-cpu-measured"
    assert github_slug("`align report` and **wandb**") == "align-report-and-wandb"
    assert github_slug("sft_lora vs [full](x.md)") == "sft_lora-vs-full"


def test_the_checker_sees_a_broken_link_and_anchor(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n\n## Memory per process\n\n[ok](b.md#second) [ok](#top) "
                                   "[bad](missing.md) [bad](b.md#nowhere) `[not a link](missing.md)`\n"
                                   "```\n[not a link](missing.md)\n```\n")
    (tmp_path / "b.md").write_text("# First\n## Second\n")
    global REPO
    repo, REPO = REPO, tmp_path
    try:
        assert broken_links(tmp_path / "a.md") == ["missing.md: no such file",
                                                   "b.md#nowhere: no heading with that anchor in b.md"]
    finally:
        REPO = repo


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def run_paths(page: Path) -> set[str]:
    """The scripts (`python scripts/...`, `bash scripts/...`) and recipes a page's code names."""
    _, code = split_code(page.read_text())
    return {p for chunk in code for p in RUN_PATH.findall(chunk) + RECIPE_PATH.findall(chunk)}


def test_the_checker_reads_commands_from_code_only(tmp_path):
    (tmp_path / "a.md").write_text("Run (`OMP_NUM_THREADS=1 python scripts/studies/x.py\nrecipes/a.yaml`), not python "
                                   "scripts/prose.py.\n\n```bash\nbash scripts/tools/y.sh recipes/b/c.yaml\n```\n"
                                   "`python scripts/<kind>/<name>.py` `recipes/$r.yaml`\n")
    assert run_paths(tmp_path / "a.md") == {"scripts/studies/x.py", "recipes/a.yaml", "scripts/tools/y.sh", "recipes/b/c.yaml"}


@pytest.mark.parametrize("page", GUIDES, ids=_name)
def test_every_script_and_recipe_it_says_to_run_exists(page):
    named = run_paths(page)
    assert [p for p in sorted(named) if not (REPO / p).is_file()] == []
    if page.name == "README.md":
        assert named, "the README names no script or recipe: the patterns above no longer match it"
