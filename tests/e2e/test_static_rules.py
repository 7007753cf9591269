"""Rules the browser client keeps by construction, checked on its source (no browser needed)."""

from __future__ import annotations

import re

import pytest

from .harness import REPO_ROOT

STATIC = REPO_ROOT / "static"
CLIENT_FILES = [
    "index.html", "chat.js", "backoff.js", "ui.js", "format.js", "picker.js", "mentions.js",
    "style.css", "emoji.json", "files.js", "attachments.js",
]


def test_client_files_exist() -> None:
    for name in CLIENT_FILES:
        assert (STATIC / name).is_file(), f"static/{name} is missing"


# Every page and script in static/ (the admin view too): user text never goes through HTML parsing.
WEB_FILES = sorted(p.name for p in STATIC.glob("*") if p.suffix in (".js", ".html"))
HTML_FILES = sorted(p.name for p in STATIC.glob("*.html"))


@pytest.mark.parametrize("name", WEB_FILES)
def test_no_html_parsing_sinks(name: str) -> None:
    source = (STATIC / name).read_text()
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "srcdoc",
    ):
        assert sink not in source, f"static/{name} uses {sink}"


def test_chat_js_stays_free_of_dom_code() -> None:
    source = (STATIC / "chat.js").read_text()
    for dom in ("document.", "window.", "querySelector", "createElement", "textContent"):
        assert dom not in source, f"chat.js touches the DOM ({dom}); that belongs in ui.js"


@pytest.mark.parametrize("name", HTML_FILES)
def test_pages_work_under_the_strict_csp(name: str) -> None:
    html = (STATIC / name).read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.S | re.I)
    assert scripts, f"{name} loads no script"
    for attrs, body in scripts:
        assert body.strip() == "", "inline script (blocked by script-src 'self')"
        assert re.search(r'\bsrc="/static/', attrs), f"script not loaded from /static/: {attrs}"
    assert not re.search(r"<style\b", html, flags=re.I), "inline <style> (blocked by style-src)"
    assert not re.search(r"\sstyle\s*=", html, flags=re.I), "style= attribute (blocked by CSP)"
    assert not re.search(r"\son[a-z]+\s*=", html, flags=re.I), "inline event handler"
    for ref in re.findall(r'\b(?:src|href)="([^"#]+)"', html):
        assert ref.startswith(("/static/", "data:")), f"relative or foreign reference: {ref}"
