"""Rewrite the settings table in README.md from the code (`roomchat settings --markdown`)."""

import re
import subprocess
import sys
from pathlib import Path

readme = Path(__file__).resolve().parent.parent / "README.md"
table = subprocess.run([sys.executable, "-m", "gateway", "settings",
                        "--markdown"], capture_output=True,
                       text=True, check=True).stdout.strip()
text = readme.read_text()
start = text.index("| environment variable |")
end = text.index("\n\n", start)
readme.write_text(text[:start] + table + text[end:])
count = len(re.findall(r"^\| `ROOMCHAT_", table, re.M))
print(f"{count} settings written to {readme}")
