"""The docker compose stack, built offline from the project's wheels (CI installs the engine)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = os.environ.get("LIVEMIG_BASE_IMAGE", "livemig-base:bookworm")


def _ok(*command: str) -> bool:
    return subprocess.run(command, capture_output=True, check=False).returncode == 0


def docker_unavailable() -> str | None:
    """Why the compose tests cannot run here, or None (scripts/docker-setup fixes all of it)."""
    if shutil.which("docker") is None:
        return "needs docker: run scripts/docker-setup (CI does)"
    if not _ok("docker", "info"):
        return "the Docker engine is not running: run scripts/docker-setup (CI does)"
    if not _ok("docker", "compose", "version"):
        return "needs Compose v2: run scripts/docker-setup (CI does)"
    if not _ok("docker", "image", "inspect", BASE_IMAGE):
        return f"needs the base image {BASE_IMAGE}: run scripts/docker-setup (CI does)"
    return None


@dataclass(frozen=True)
class Compose:
    """A running compose project (with its `monitoring` profile when `prometheus`)."""

    project: str
    env: dict[str, str]
    prometheus: bool = False

    def run(self, *args: str) -> str:
        """`docker compose ARGS` in this project; raises with its output on failure."""
        result = subprocess.run(
            ["docker", "compose", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)}:\n{result.stderr[-3000:]}")
        return result.stdout


def _build_prometheus_image() -> str | None:
    """The compose Prometheus, built from Debian's binary on the base image (None: no binary).

    docker/prometheus/Dockerfile says how; with a registry, compose pulls prom/prometheus.
    """
    binary = shutil.which("prometheus")
    if binary is None:
        return None
    tag = "livemig-prometheus:local"
    with tempfile.TemporaryDirectory() as context:
        shutil.copy2(binary, Path(context) / "prometheus")
        subprocess.run(
            ["docker", "build", "--quiet", "-t", tag, "-f",
             str(ROOT / "docker" / "prometheus" / "Dockerfile"),
             "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", context],
            check=True,
            capture_output=True,
        )  # fmt: skip
    return tag


@pytest.fixture(scope="module")
def compose() -> Iterator[Compose]:
    """Build the image offline (wheels from the host, Debian base) and bring the stack up."""
    reason = docker_unavailable()
    if reason is not None:
        pytest.skip(reason)
    wheels = ROOT / "docker" / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         ".", "-w", str(wheels)],
        cwd=ROOT,
        check=True,
    )  # fmt: skip
    project = f"livemigtest{secrets.token_hex(3)}"
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": project,
        "LIVEMIG_BASE_IMAGE": BASE_IMAGE,
        "LIVEMIG_PIP_OFFLINE": "1",
        "LIVEMIG_RAM_MIB": "128",
    }
    prometheus = _build_prometheus_image()
    if prometheus is not None:
        env |= {"COMPOSE_PROFILES": "monitoring", "LIVEMIG_PROMETHEUS_IMAGE": prometheus}
    stack = Compose(project=project, env=env, prometheus=prometheus is not None)
    stack.run("build")
    try:
        stack.run("up", "--detach", "--wait", "--wait-timeout", "120")
        yield stack
    finally:
        logs = subprocess.run(
            ["docker", "compose", "logs", "--no-color"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            check=False,
        )
        (ROOT / "build").mkdir(exist_ok=True)
        (ROOT / "build" / f"{project}.log").write_bytes(logs.stdout)
        stack.run("down", "--volumes", "--remove-orphans", "--timeout", "5")
