"""Fixtures for the end-to-end tests: a real `roomchat serve` per test, Debian's Chromium.

- `make_server(*extra_args)` starts a server on a free port with its own data dir (stopped
  with SIGTERM after the test); `server` is one with default settings.
- `open_page(url, ...)` opens the URL in a fresh browser context (its own sessionStorage), and
  after the test fails it if the page threw an uncaught error or violated the CSP.
- `axe_source`: axe-core's script, installed with `npm ci` into tests/e2e/axe/ on first use
  (`accessibility.axe_problems` runs it).
- `shoot(page, name)` saves test-artefacts/<name>.png and checks that it is a real picture.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from .accessibility import axe_script
from .harness import ARTEFACTS, CHROMIUM, CHROMIUM_ARGS, RoomchatServer, check_screenshot

EXPECT_TIMEOUT_MS = 30_000
ACTION_TIMEOUT_MS = 30_000

# Collects CSP violations in every document, before any page script runs (added over CDP, so
# the page's own CSP does not apply to it).
CSP_WATCH = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(
    e.violatedDirective + ' ' + (e.blockedURI || '') + ' ' + (e.sample || ''));
});
"""

expect.set_options(timeout=EXPECT_TIMEOUT_MS)

ServerFactory = Callable[..., RoomchatServer]
PageOpener = Callable[..., Page]
Shooter = Callable[[Page, str], Path]


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:120]


# Package scope, not session: Playwright's sync API keeps an event loop running in this thread
# while it is open, which would break every pytest-asyncio test collected after tests/e2e.
@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium "
            "(`apt-get install -y chromium`; the Makefile does this)."
        )
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=120_000
        )
        yield chromium
        chromium.close()


@pytest.fixture
def make_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ServerFactory]:
    servers: list[RoomchatServer] = []

    def make(*extra_args: str) -> RoomchatServer:
        n = len(servers)
        server = RoomchatServer(
            data_dir=tmp_path / f"data{n}",
            log_path=tmp_path / f"server{n}.log",
            extra_args=extra_args,
        )
        servers.append(server)
        server.start()
        return server

    yield make
    problems: list[str] = []
    for n, server in enumerate(servers):
        try:
            server.stop()
        except AssertionError as exc:
            problems.append(str(exc))
        finally:
            server.kill()
            if server.log_path.exists():
                ARTEFACTS.mkdir(exist_ok=True)
                target = ARTEFACTS / f"{_safe_name(request.node.name)}-server{n}.log"
                shutil.copyfile(server.log_path, target)
    if problems:
        pytest.fail("\n\n".join(problems))


@pytest.fixture
def server(make_server: ServerFactory) -> RoomchatServer:
    return make_server()


@pytest.fixture
def busy_server(make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> RoomchatServer:
    """A server whose rate limits let a test fill a room with hundreds of messages in a moment."""
    monkeypatch.setenv("ROOMCHAT_RATE_BURST", "1000")
    monkeypatch.setenv("ROOMCHAT_RATE_PER_SEC", "1000")
    return make_server()


@dataclass
class _OpenedPage:
    page: Page
    context: BrowserContext
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def open_page(browser: Browser) -> Iterator[PageOpener]:
    opened: list[_OpenedPage] = []

    def open_(
        url: str | None = None,
        *,
        width: int = 1100,
        height: int = 760,
        color_scheme: str = "light",
        init_script: str | None = None,
    ) -> Page:
        context = browser.new_context(
            viewport={"width": width, "height": height},
            color_scheme="dark" if color_scheme == "dark" else "light",
            reduced_motion="reduce",  # no smooth scrolling or animations to wait for
        )
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        page = context.new_page()
        entry = _OpenedPage(page, context)
        page.on("pageerror", lambda exc: entry.errors.append(f"uncaught: {exc}"))
        page.add_init_script(CSP_WATCH)
        if init_script:
            page.add_init_script(init_script)
        opened.append(entry)
        if url is not None:
            page.goto(url)
        return page

    yield open_
    problems: list[str] = []
    for entry in opened:
        try:
            violations = entry.page.evaluate("window.__cspViolations || []")
        except Exception:  # the page may be closed or mid-navigation; nothing to read then
            violations = []
        problems += [f"CSP violation: {v}" for v in violations]
        problems += entry.errors
        entry.context.close()
    assert not problems, "\n".join(problems)


@pytest.fixture
def shoot() -> Shooter:
    def shoot_(page: Page, name: str) -> Path:
        ARTEFACTS.mkdir(exist_ok=True)
        path = ARTEFACTS / f"{_safe_name(name)}.png"
        path.unlink(missing_ok=True)
        page.screenshot(path=str(path), animations="disabled", caret="hide")
        check_screenshot(path)
        return path

    return shoot_


@pytest.fixture(scope="module")
def axe_source() -> str:
    """axe-core's source, installed on first use (``accessibility.axe_script``)."""
    return axe_script()
