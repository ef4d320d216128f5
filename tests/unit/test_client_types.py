"""The browser code (client_web/, plain ES modules served as they are) is type-checked: `tsc --noEmit` over the
JSDoc types, with the TypeScript that package.json pins (installed into node_modules/ by scripts/bootstrap.sh test)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TSC = ROOT / "node_modules" / ".bin" / "tsc"


def tsc(project: Path) -> subprocess.CompletedProcess[str]:
    if not TSC.exists():
        pytest.fail(f"{TSC} is missing: run `bash scripts/bootstrap.sh test` (it runs `npm ci`)")
    return subprocess.run([str(TSC), "--noEmit", "-p", str(project)], capture_output=True, text=True, timeout=300)


def test_the_browser_code_type_checks() -> None:
    result = tsc(ROOT)
    assert result.returncode == 0, f"tsc reports errors:\n{result.stdout}{result.stderr}"


def test_a_type_error_fails_the_check(tmp_path: Path) -> None:
    """The same settings on a copy of the code with one wrong call: tsc must say no (the check can fail)."""
    shutil.copy(ROOT / "tsconfig.json", tmp_path / "tsconfig.json")
    shutil.copytree(ROOT / "client_web", tmp_path / "client_web", ignore=shutil.ignore_patterns("__pycache__"))
    media = tmp_path / "client_web" / "media.js"
    media.write_text(media.read_text(encoding="utf-8") + '\nattach("not an element", null);\n', encoding="utf-8")
    result = tsc(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "media.js" in result.stdout and "TS2345" in result.stdout, result.stdout
