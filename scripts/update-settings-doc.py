"""Rewrite the settings table in docs/configuration.md from the code (`roomchat settings
--markdown`): the table from its header row up to the first blank line after it."""

import re
import subprocess
import sys
from pathlib import Path

doc = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
table = subprocess.run([sys.executable, "-m", "gateway", "settings",
                        "--markdown"], capture_output=True,
                       text=True, check=True).stdout.strip()
text = doc.read_text()
start = text.index("| environment variable |")
end = text.index("\n\n", start)
doc.write_text(text[:start] + table + text[end:])
count = len(re.findall(r"^\| `ROOMCHAT_", table, re.M))
print(f"{count} settings written to {doc}")
