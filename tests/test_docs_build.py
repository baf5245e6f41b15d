"""The strict docs build can fail: ``make docs`` on a tiny copy with a planted broken link.

The copy keeps the project's mkdocs.yml (theme, strict mode, link validation) with a
one-page nav, and runs the Makefile's own ``docs`` target, so a flag that hides warnings
(``--quiet`` did: it lowers mkdocs' log level below WARNING) is caught here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A project copy: the Makefile, mkdocs.yml with one page, the test run's virtualenv."""
    if shutil.which("make") is None:
        pytest.fail("make is needed to run the docs target")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config["nav"] = [{"Home": "index.md"}]
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "docs").mkdir()
    # The virtualenv running the tests stands in for .venv; an old pyproject.toml keeps
    # make from reinstalling into it.
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    (tmp_path / "pyproject.toml").write_text("")
    os.utime(tmp_path / "pyproject.toml", (0, 0))
    stamp = tmp_path / ".venv" / ".installed-dev"
    if not stamp.exists():
        pytest.fail(f"{stamp} is missing: run `make lint` once to set up .venv")
    return tmp_path


def make_docs(site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "docs"],
        cwd=site,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_make_docs_fails_on_a_link_to_a_missing_page(site: Path) -> None:
    (site / "docs" / "index.md").write_text("# Home\n\nSee [the missing page](missing.md).\n")
    done = make_docs(site)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "missing.md" in done.stderr and "not found" in done.stderr


def test_make_docs_fails_on_a_link_outside_the_docs(site: Path) -> None:
    (site / "docs" / "index.md").write_text("# Home\n\n[bench](../bench/README.md)\n")
    done = make_docs(site)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "../bench/README.md" in done.stderr


def test_good_docs_build_with_or_without_the_banner(site: Path) -> None:
    (site / "docs" / "index.md").write_text("# Home\n\nNothing broken.\n")
    done = make_docs(site)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (site / "site" / "index.html").exists()
    # Without the switch the theme prints its banner; that alone fails nothing.
    env = {k: v for k, v in os.environ.items() if k != "NO_MKDOCS_2_WARNING"}
    done = subprocess.run(
        [str(Path(sys.prefix) / "bin" / "mkdocs"), "build", "--strict", "-d", "site2"],
        cwd=site,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "NO_MKDOCS_2_WARNING" in done.stderr  # the banner was there
