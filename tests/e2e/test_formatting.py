"""Formatting in the page (issue 21): the small safe subset (`code`, fenced blocks, *bold*,
_italic_, ~strike~, > quotes, http(s) and www. links) becomes DOM nodes while the stored text
stays raw; and an XSS corpus, sent through the real server, proves that no element other than
the allowed ones is created, no attribute but the page's own, no link but http(s), and no script
runs."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import Page, expect

from .conftest import PageOpener, Shooter
from .harness import ChatPeer, RoomchatServer
from .pages import expect_live, message_box, message_item, texts

# What static/format.js may create inside a message's text, and the attributes each may carry.
ALLOWED = {
    "A": {"href", "target", "rel", "dir"},
    "BLOCKQUOTE": set(),
    "CODE": set(),
    "EM": set(),
    "PRE": set(),
    "S": set(),
    "SPAN": {"class"},
    "STRONG": set(),
}

XSS = "window.__xss=1"
CORPUS = [
    f"<img src=x onerror={XSS}>",
    f"<script>{XSS}</script>",
    f"<svg onload={XSS}>",
    f"<svg><script>{XSS}</script></svg>",
    f"<iframe src=javascript:{XSS}>",
    f'<a href="javascript:{XSS}">click</a>',
    f"[click](javascript:{XSS})",
    f"javascript:{XSS}",
    f"JaVaScRiPt:{XSS} and java\tscript:{XSS}",
    f'https://example.org/"onmouseover="{XSS}',
    f"https://example.org/<img src=x onerror={XSS}>",
    f'www.example.org/"><script>{XSS}</script>',
    f"`<img src=x onerror={XSS}>`",
    f"```\n<script>{XSS}</script>\n```",
    f"```html\n<img src=x onerror={XSS}>\nthe fence never closes",
    f"> <img src=x onerror={XSS}>\n> *<b>bold</b>*",
    f"*<b onmouseover={XSS}>bold</b>*",
    "_<i>it</i>_ ~<s>struck</s>~",
    "*_~nested all three~_*",
    "*unclosed _markers ~everywhere",
    "**double** __double__ ~~double~~",
    "*a _b* c_ crossing markers",
    "`unclosed code and ```unclosed fence",
    f"&lt;img src=x onerror={XSS}&gt; &#60;script&#62;{XSS}&#60;/script&#62;",
    f"<math><mtext><table><mglyph><style><img src=x onerror={XSS}>",
    f'<noscript><p title="</noscript><img src=x onerror={XSS}>">',
    f"<style>@import 'javascript:{XSS}'</style>",
    f"<object data=javascript:{XSS}></object><embed src=javascript:{XSS}>",
    f"<form action=javascript:{XSS}><button>go</button></form>",
    f"<details open ontoggle={XSS}>",
    f"<video><source onerror={XSS}></video>",
    f"<body onload={XSS}>",
    f'<meta http-equiv=refresh content="0;url=javascript:{XSS}">',
    f"data:text/html,<script>{XSS}</script>",
    "vbscript:msgbox(1)",
    "http://\u202eexample.org/gpj.exe",
    "see https://example.org/\u202egpj.exe now",
    "\u202eevil override\u202c then text",
    "\u2066isolate\u2069 www.example.org/\u202ecod.exe",
    f"@<img src=x onerror={XSS}>",
    "${alert(1)} {{constructor.constructor('window.__xss=1')()}}",
    f"'\"><svg/onload={XSS}>",
    f'<a href="https://example.org" onclick="{XSS}">x</a>',
    f"\u0001<script>{XSS}</script>",  # (U+0000 is refused: no engine may keep it)
    f"https://example.org/*{XSS}*_a_~b~",
    "https://user:pass@example.org:8080/path?q=<x>#frag",
]

# Any way the corpus might run code ends here: the page's own functions are replaced by traps.
TRAPS = """
window.__xss = undefined;
window.alert = window.confirm = window.prompt = () => { window.__xss = 'dialog'; };
"""


def rendered_problems(page: Page) -> list[str]:
    """Elements, attributes and links inside messages' text that the formatter must not make."""
    problems: list[str] = page.evaluate(
        """(allowed) => {
          const out = [];
          for (const node of document.querySelectorAll('#log .text *, #pending .text *')) {
            const ok = allowed[node.tagName];
            if (!ok) { out.push('element ' + node.tagName); continue; }
            for (const attr of node.getAttributeNames()) {
              if (!ok.includes(attr)) out.push(node.tagName + ' has ' + attr);
            }
            if (node.tagName === 'A') {
              if (!/^https?:\\/\\//.test(node.href)) out.push('link to ' + node.href);
              if (/[\\u061c\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069]/.test(node.textContent)) {
                out.push('bidi control in the shown address ' + JSON.stringify(node.textContent));
              }
            }
            if (node.tagName === 'SPAN' && !/^mention( mention-me)?$/.test(node.className)) {
              out.push('span of class ' + node.className);
            }
          }
          return out;
        }""",
        {tag: sorted(attrs) for tag, attrs in ALLOWED.items()},
    )
    return problems


def test_the_formatting_subset_becomes_elements_and_the_text_stays_raw(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    samples = [
        "*bold* _italic_ ~strike~ `a_b*c*` www.example.org https://example.org/a_b_c.",
        "snake_case_name, 2*3*4 and a lone * stay as typed",
        "```\nline 1\n  *not bold* <b>\n```",
        "> quoted *bold*\n> second line\nafter the quote",
        "*bold _and italic_ inside*",
    ]
    page = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(page)
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        for n, text in enumerate(samples):
            bob.send(text, f"b-{n}")
        expect(texts(page)).to_have_count(len(samples))
        # Stored as typed: what other clients get is the raw text.
        assert [m["text"] for m in bob.messages][-len(samples):] == samples

    first = page.locator("#log li.msg .text").nth(0)
    expect(first.locator("strong")).to_have_text(["bold"])
    expect(first.locator("em")).to_have_text(["italic"])
    expect(first.locator("s")).to_have_text(["strike"])
    expect(first.locator("code")).to_have_text(["a_b*c*"])  # nothing inside code is formatted
    links = first.locator("a")
    expect(links).to_have_text(["www.example.org", "https://example.org/a_b_c"])
    assert links.evaluate_all("as => as.map(a => a.href)") == [
        "https://www.example.org/", "https://example.org/a_b_c"]
    expect(first).to_have_text(
        "bold italic strike a_b*c* www.example.org https://example.org/a_b_c.")

    plain = page.locator("#log li.msg .text").nth(1)
    expect(plain.locator("*")).to_have_count(0)
    expect(plain).to_have_text(samples[1])

    fence = page.locator("#log li.msg .text").nth(2)
    expect(fence.locator("pre > code")).to_have_count(1)
    assert fence.locator("pre > code").evaluate("c => c.textContent") == "line 1\n  *not bold* <b>"
    expect(fence.locator("strong, b")).to_have_count(0)

    quote = page.locator("#log li.msg .text").nth(3)
    expect(quote.locator("blockquote")).to_have_count(1)
    expect(quote.locator("blockquote strong")).to_have_text("bold")
    assert quote.locator("blockquote").evaluate("q => q.textContent") == "quoted bold\nsecond line"
    expect(quote).to_contain_text("after the quote")

    nested = page.locator("#log li.msg .text").nth(4)
    expect(nested.locator("strong > em")).to_have_text("and italic")
    assert rendered_problems(page) == []
    shoot(page, "formatting")

    # One's own message: the editor shows the raw text.
    message_box(page).fill("*mine*")
    message_box(page).press("Enter")
    expect(message_item(page, "mine").locator("strong")).to_have_text("mine")
    message_box(page).press("ArrowUp")
    expect(page.get_by_label("Edit message", exact=True)).to_have_value("*mine*")


def test_an_xss_corpus_creates_nothing_but_the_allowed_elements_and_runs_nothing(
    busy_server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    server = busy_server
    page = open_page(init_script=TRAPS)
    page.goto(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(page)
    with ChatPeer(server, "lobby", "mallory", name="Mallory") as mallory:
        for n, text in enumerate(CORPUS):
            mallory.send(text, f"x-{n}", mentions=["alice"])
        expect(texts(page)).to_have_count(len(CORPUS))
    # Hover and focus everything: no handler may hide behind an event.
    for item in page.locator("#log li.msg").all():
        item.hover()
    problems = rendered_problems(page)
    assert problems == [], "\n".join(problems)
    assert page.evaluate("window.__xss") is None
    assert page.locator("#log img, #log script, #log iframe, #log object, #log embed, "
                        "#log form, #log video, #log math, #log style, #log meta").count() == 0
    # Every message shows what was sent, minus the markers the subset uses.
    shown = texts(page).evaluate_all("ts => ts.map(t => t.textContent)")
    assert shown[0] == CORPUS[0] and shown[1] == CORPUS[1]
    # The override inside an address does not reorder it: the address shown is the real one.
    link = page.locator("#log li.msg .text a", has_text="example.org/gpj.exe")
    expect(link).to_have_text("https://example.org/gpj.exe")
    assert "%E2%80%AE" in (link.get_attribute("href") or "")
    shoot(page, "xss-corpus")

    # The same corpus straight through the formatter (no server in between): same verdict.
    direct: list[Any] = page.evaluate(
        """async (corpus) => {
          const { renderText, ALLOWED_TAGS } = await import('/static/format.js');
          const out = [];
          for (const text of corpus) {
            const div = document.createElement('div');
            renderText(div, text, { mentions: [{ pattern: '@Alice', me: true }] });
            for (const node of div.querySelectorAll('*')) {
              if (!ALLOWED_TAGS.includes(node.tagName)) out.push([text, node.tagName]);
              for (const attr of node.getAttributeNames()) {
                if (/^(on|style$|src$)/.test(attr)) out.push([text, attr]);
              }
            }
          }
          return out;
        }""",
        CORPUS,
    )
    assert direct == []
    assert page.evaluate("window.__xss") is None
    # This test's list of allowed elements is the formatter's own.
    allowed_tags = page.evaluate("async () => (await import('/static/format.js')).ALLOWED_TAGS")
    assert sorted(allowed_tags) == sorted(ALLOWED)
