"""docs/protocol.md stays true: its copy of the state tables is generated from protocol.states."""

from __future__ import annotations

from pathlib import Path

from protocol.states import render_markdown

DOC = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"


def test_state_tables_in_the_doc_match_the_code():
    text = DOC.read_text()
    begin, end = "<!-- states:begin -->\n", "\n<!-- states:end -->"
    copy = text[text.index(begin) + len(begin) : text.index(end)]

    assert render_markdown() == copy
