"""protocol/ stays sans-IO: only the stdlib modules below, msgpack, xxhash, zstandard and numpy.

(import-linter checks the same contract project-wide; this test needs no configuration.)
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[3] / "protocol"
ALLOWED = {
    "__future__",
    "abc",
    "bisect",
    "collections",
    "contextlib",
    "dataclasses",
    "enum",
    "itertools",
    "struct",
    "typing",
    "uuid",
    "zlib",
    "msgpack",
    "numpy",
    "xxhash",
    "zstandard",
    "protocol",
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_only_allowed_imports():
    for path in sorted(PACKAGE.glob("*.py")):
        assert set() == imported_roots(path) - ALLOWED, path.name
