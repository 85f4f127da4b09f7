"""``analyze_stream``: structure of a captured stream, and reports (not crashes) on damage."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.pair import PAGE_SIZE, ConnectionPair, make_config, sent_bytes

from protocol import SourceConnection, analyze_stream

VECTOR = (Path(__file__).resolve().parents[2] / "vectors" / "file_v2.bin").read_bytes()


def test_vector_report():
    report = analyze_stream([VECTOR])
    json.dumps(report)  # JSON-able

    assert {"magic": "LVMG", "version": 2} == report["header"]
    assert "mig-0001" == report["configuration"]["migration_id"]
    assert "clean" == report["end"]
    assert "error" not in report
    kinds = [f["kind"] for f in report["frames"]]
    assert ["CONFIGURATION", "SECTION_START", "SECTION_FULL", "SECTION_PART", "COMMAND"] == kinds[
        :5
    ]
    assert "VMDESCRIPTION" == kinds[-1]
    assert {"normal_pages": 6, "zero_pages": 3, "data_bytes": 6 * 1024} == report["ram"]
    ram = next(s for s in report["sections"] if s["idstr"] == "ram")
    assert {"normal": 6, "zero": 3} == ram["pages"]
    assert 3 == ram["frames"]
    part = report["frames"][3]
    assert {"normal": 5, "zero": 1} == part["pages"]
    assert (3, 3) == (part["index"], part["runs"])


def test_device_fields_typed_through_the_description():
    report = analyze_stream([VECTOR])
    serial = next(d for d in report["devices"] if d["idstr"] == "serial0")
    cpu = next(d for d in report["devices"] if d["idstr"] == "cpu")

    assert serial["described"]
    assert {"name": "fifo", "type": "buffer", "value": "0102"} in serial["fields"]
    assert {"name": "regs", "type": "list", "value": [1, 2, 3]} in cpu["fields"]
    assert not cpu["described"]


def test_description_types_win():
    source = SourceConnection(return_path=False, timeouts=None, now=0.0)
    source.send_configuration(make_config())
    source.send_section_start(1, "ram", 0, 4, {"ram_size": 16 * PAGE_SIZE, "page_size": PAGE_SIZE})
    source.send_switchover_start()
    state = {
        "fields": {"lsr": 96},
        "subsections": {"serial0/fifo": {"version_id": 1, "fields": {"data": b"\xab"}}},
    }
    source.send_section_full(2, "serial0", 0, 1, state)
    source.send_eof()
    vmdesc = {
        "devices": [
            {
                "name": "serial0",
                "instance_id": 0,
                "fields": [{"name": "lsr", "type": "uint8", "size": 1}],
                "subsections": [
                    {
                        "vmsd_name": "serial0/fifo",
                        "fields": [{"name": "data", "type": "fifo_bytes"}],
                    }
                ],
            }
        ]
    }
    source.send_vmdesc(vmdesc)
    (device,) = analyze_stream([sent_bytes(source)])["devices"]

    assert [{"name": "lsr", "type": "uint8", "value": 96}] == device["fields"]
    sub = device["subsections"]["serial0/fifo"]
    assert ([{"name": "data", "type": "fifo_bytes", "value": "ab"}], 1) == (
        sub["fields"],
        sub["version_id"],
    )


def test_corrupted_stream_reports_what_was_decoded_and_where_it_broke():
    damaged = bytearray(VECTOR)
    part = analyze_stream([VECTOR])["frames"][3]
    damaged[part["offset"] + 16 + part["meta_bytes"] + 10] ^= 0xFF
    report = analyze_stream([bytes(damaged[:5000]), bytes(damaged[5000:])])

    assert "error" == report["end"]
    assert {"code": "CHECKSUM_MISMATCH", "frame": 3, "offset": part["offset"]} == {
        k: report["error"][k] for k in ("code", "frame", "offset")
    }
    assert "ram" in report["error"]["message"]
    assert 3 == len(report["frames"])


def test_truncated_stream():
    inside = analyze_stream([VECTOR[:1000]])
    boundary = analyze_stream([VECTOR[: analyze_stream([VECTOR])["frames"][3]["offset"]]])

    assert ("TRUNCATED", "error") == (inside["error"]["code"], inside["end"])
    assert ("TRUNCATED", "unclean") == (boundary["error"]["code"], boundary["end"])
    assert 3 == boundary["error"]["frame"]


def test_garbage_and_empty_input():
    garbage = analyze_stream([b"QEVM\x00\x00\x00\x03" + bytes(100)])
    empty = analyze_stream([])

    assert "BAD_MAGIC" == garbage["error"]["code"]
    assert (None, "unclean") == (empty["header"], empty["end"])


def test_a_return_path_capture_is_refused_cleanly():
    pair = ConnectionPair()
    pair.source.send_configuration(make_config())
    pair.source.send_open_return_path()
    report = analyze_stream([sent_bytes(pair.source)])
    assert "UNEXPECTED_SECTION" == report["error"]["code"]
