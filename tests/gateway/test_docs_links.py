"""Every relative link in README.md and docs/ leads somewhere: the file (or folder) exists in the
repository and, when the link names an anchor, the target has a heading with that anchor.

Links are Markdown links and images (``[text](target)``, ``![alt](target)``, reference
definitions ``[name]: target``) and HTML ``href``/``src`` attributes; anything inside code (fenced
blocks and `spans`) is left alone, as are links with a scheme (``https:``, ``mailto:``). Anchors
follow GitHub's rule: the heading's text in lower case, without punctuation, spaces as hyphens,
``-1``, ``-2``... for repeats.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted([REPO / "README.md", *(
    doc for doc in (REPO / "docs").rglob("*.md") if "node_modules" not in doc.parts)])
"""README.md and the docs (not the examples' installed Node packages)."""

FENCE = re.compile(r"^ {0,3}(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HTML_ATTR = re.compile(r"""\b(?:href|src)\s*=\s*["']([^"']+)["']""")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ID = re.compile(r"""<a\s+(?:id|name)\s*=\s*["']([^"']+)["']""")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def outside_fences(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line of ``text`` outside fenced code blocks."""
    lines: list[tuple[int, str]] = []
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        opened = FENCE.match(line)
        if fence is not None:
            if opened and opened.group(1) == fence:
                fence = None
        elif opened:
            fence = opened.group(1)
        else:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (Markdown emphasis, code and links reduced to text)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w keeps letters of every script, digits and _
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a Markdown document defines: its headings' slugs and HTML ids."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in outside_fences(text):
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        found.update(HTML_ID.findall(line))
    return found


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every link in ``text`` outside code, in order."""
    found: list[tuple[int, str]] = []
    for number, line in outside_fences(text):
        prose = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)
        hits = [(m.start(), m.group(1)) for m in INLINE_LINK.finditer(prose)]
        hits += [(m.start(), m.group(1)) for m in HTML_ATTR.finditer(prose)]
        reference = REFERENCE.match(prose)
        if reference:
            hits.append((0, reference.group(1)))
        found += [(number, target) for _, target in sorted(hits)]
    return found


def broken(document: Path, target: str) -> str | None:
    """Why ``target``, linked from ``document``, leads nowhere; None when it leads somewhere."""
    if SCHEME.match(target):
        return None
    path_part, _, anchor = target.partition("#")
    path = (document.parent / unquote(path_part)).resolve() if path_part else document
    if not path.is_relative_to(REPO):
        return f"{target}: outside the repository"
    if not path.exists():
        return f"{target}: no such file"
    if anchor and path.suffix == ".md" and unquote(anchor) not in anchors(path.read_text()):
        return f"{target}: {path.relative_to(REPO)} has no heading #{anchor}"
    return None


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(document: Path) -> None:
    problems = [f"{document.relative_to(REPO)}:{number}: {why}"
                for number, target in links(document.read_text())
                if (why := broken(document, target)) is not None]
    assert not problems, "\n".join(problems)


def test_the_docs_index_lists_every_document() -> None:
    index = REPO / "docs" / "README.md"
    listed = {(index.parent / target.partition("#")[0]).resolve()
              for _, target in links(index.read_text()) if not SCHEME.match(target)}
    unlisted = [str(doc.relative_to(REPO)) for doc in DOCUMENTS
                if doc.parent != REPO and doc != index and doc not in listed]
    assert not unlisted, f"docs/README.md does not list: {unlisted}"


# -- the checker itself ---------------------------------------------------------------------------

SAMPLE = """\
# Getting started
## Run it: `make run`
## Run it: `make run`
## Ünïcode & symbols!
<a id="custom"></a>
See [start](#getting-started), [again](#run-it-make-run-1), [u](#ünïcode--symbols), [c](#custom),
![a picture](pic.png "title") and <img src="other.png" alt="">. Skipped: `[code](nowhere.md)`,
[web](https://example.org/missing).

```md
[in a fence](nowhere.md)
```
[ref]: ../outside.md
"""


def test_the_checker_finds_links_and_anchors_as_github_does(tmp_path: Path) -> None:
    assert anchors(SAMPLE) == {"getting-started", "run-it-make-run", "run-it-make-run-1",
                               "ünïcode--symbols", "custom"}
    assert [target for _, target in links(SAMPLE)] == [
        "#getting-started", "#run-it-make-run-1", "#ünïcode--symbols", "#custom", "pic.png",
        "other.png", "https://example.org/missing", "../outside.md"]


def test_the_checker_reports_missing_files_anchors_and_escapes() -> None:
    readme = REPO / "README.md"
    assert broken(readme, "docs/README.md") is None
    assert broken(readme, "docs/") is None
    assert broken(readme, "https://example.org/nowhere") is None
    assert broken(readme, "docs/nowhere.md") == "docs/nowhere.md: no such file"
    assert broken(readme, "docs/README.md#no-such-heading") == (
        "docs/README.md#no-such-heading: docs/README.md has no heading #no-such-heading")
    assert broken(readme, "../outside.md") == "../outside.md: outside the repository"
