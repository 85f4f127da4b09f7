"""The Dockerfile's online build (`pip install /src`) copies every package pyproject installs.

CI builds the image offline from wheels made on the host, which always hold every package;
users with a registry build from the copied sources, where a package left out (`migration`
was, until 2026-12-03) makes an image whose daemons fail at import.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_is_copied_into_the_image() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in patterns}
    copied = set(
        re.findall(r"^COPY (\w+) /src/\1$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    )

    assert packages == copied
