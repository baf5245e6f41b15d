"""Fetch Django's own mail tests for the installed Django version (test set-up).

Django runs ``BaseEmailBackendTests`` (its ``tests/mail/tests.py``) against each
of its email backends; tests/test_django_backend.py runs the same class against
``smtpsubmit.django.EmailBackend``. Those tests ship in Django's source
distribution, not in the wheel, so this script downloads the sdist of exactly
the installed version from the package index and keeps ``tests/mail/`` under
``<venv>/django-upstream-tests/<version>/``. Idempotent: quick when present.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import django


def target_dir() -> Path:
    return Path(sys.prefix) / "django-upstream-tests" / django.__version__


def main() -> int:
    target = target_dir()
    if (target / "mail" / "tests.py").is_file():
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--dest",
                tmp,
                f"django=={django.__version__}",
            ],
            check=True,
        )
        (sdist,) = Path(tmp).glob("[Dd]jango-*.tar.gz")
        with tarfile.open(sdist) as archive:
            members = [m for m in archive.getmembers() if "/tests/mail/" in m.name]
            archive.extractall(tmp, members=members, filter="data")
        (source,) = Path(tmp).glob("[Dd]jango-*/tests/mail")
        target.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, target / "mail", dirs_exist_ok=True)
    print(f"fetch-django-tests: Django {django.__version__} mail tests in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
