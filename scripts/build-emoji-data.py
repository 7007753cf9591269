"""Write static/emoji.json, the reaction picker's emoji, from the `emoji` package's data.

The page needs nothing at runtime: run this once with the package installed somewhere else
(it is not a dependency of roomchat) and commit its output:

    python3 -m venv /tmp/emoji-venv && /tmp/emoji-venv/bin/pip install emoji
    /tmp/emoji-venv/bin/python scripts/build-emoji-data.py

What goes in: every fully-qualified RGI emoji without a skin-tone modifier (the server accepts
those too, through the same package's `is_emoji`; the picker offers the default of each), in an
order that puts faces and people first, then nature, food, activities, travel, objects,
symbols and flags (Unicode blocks, which follow those groups closely). Each entry is
`[emoji, name]` or `[emoji, name, "other names"]`, names in lower case with spaces, for search.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

try:
    import emoji
except ImportError:
    sys.exit("the `emoji` package is missing: pip install emoji (see this script's docstring)")

OUT = Path(__file__).resolve().parent.parent / "static" / "emoji.json"
SKIN_TONES = {chr(c) for c in range(0x1F3FB, 0x1F400)}
# Unicode blocks in the order the picker lists them: (first, last) code point of the first
# character.
BLOCK_ORDER = [
    (0x1F600, 0x1F64F),  # emoticons: faces, gestures
    (0x1F900, 0x1F9FF),  # supplemental symbols and pictographs: more faces, people, animals
    (0x1FA70, 0x1FAFF),  # symbols and pictographs extended-A: newer faces, food, objects
    (0x1F300, 0x1F5FF),  # miscellaneous symbols and pictographs: nature, food, places, objects
    (0x1F680, 0x1F6FF),  # transport and map symbols
    (0x2600, 0x27BF),  # miscellaneous symbols and dingbats
]


def plain(name: str) -> str:
    """':thumbs_up:' -> 'thumbs up'."""
    return name.strip(":").replace("_", " ").lower()


def order(item: str) -> tuple[int, str]:
    first = ord(item[0])
    for rank, (low, high) in enumerate(BLOCK_ORDER):
        if low <= first <= high:
            return rank, item
    return len(BLOCK_ORDER), item  # keycaps, flags, arrows, letters: last


def main() -> None:
    fully = emoji.STATUS["fully_qualified"]
    entries: list[list[str]] = []
    for item in sorted(emoji.EMOJI_DATA, key=order):
        data = emoji.EMOJI_DATA[item]
        if data["status"] != fully or SKIN_TONES & set(item):
            continue
        name = plain(data["en"])
        others = [plain(a) for a in data.get("alias", [])]
        others = list(dict.fromkeys(a for a in others if a != name))
        entries.append([item, name, " ".join(others)] if others else [item, name])
    doc = {"source": f"emoji {emoji.__version__} (PyPI), fully-qualified, default skin tone",
           "emoji": entries}
    OUT.write_text(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"{len(entries)} emoji written to {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
