"""axe-core in a page: the source to inject (installed from npm into tests/e2e/axe/ on first
use) and the serious or critical violations it finds. Shared by the accessibility tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

AXE_DIR = Path(__file__).resolve().parent / "axe"
AXE_JS = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"


def axe_script() -> str:
    """axe-core's source (``npm ci`` in tests/e2e/axe/ the first time); fails the test when
    npm is missing."""
    if not AXE_JS.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is missing: the accessibility tests install axe-core with `npm ci`")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=AXE_DIR, check=True,
                       timeout=300)
    return AXE_JS.read_text()


def axe_problems(page: Page) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now."""
    violations: list[dict[str, Any]] = page.evaluate(
        """async () => {
          const result = await axe.run(document, { resultTypes: ['violations'] });
          return result.violations.map((v) => ({
            id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.map((n) => n.target.join(' ') + ' :: ' + n.failureSummary),
          }));
        }"""
    )
    return [
        f"{v['id']} ({v['impact']}): {v['help']}\n    " + "\n    ".join(v["nodes"][:5])
        for v in violations
        if v["impact"] in ("serious", "critical")
    ]
