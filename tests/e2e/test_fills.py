"""Real memory contents with real processes: `--fill image:PATH` and `--fill mixed` migrate, and
`livemig replay` reproduces them, or says clearly that the image changed since."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import FINAL, dest_args, livemig, migrate, qmp, source_args, stopped_vm

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


async def test_an_image_fill_migrates_and_replays_until_the_image_changes(daemons, tmp_path):
    image = tmp_path / "guest.mem"
    image.write_bytes(bytes(range(256)) * 8192 + b"\x00" * (1 << 20))  # 3 MiB: data, zeros
    source = daemons("source_daemon", *source_args("uvloop", ram_mib=16, fill=f"image:{image}"))
    dest = daemons("dest_daemon", *dest_args("uvloop"))
    info = await migrate(source, dest)
    assert "completed" == info["status"]
    async with qmp(dest) as client:
        vm = await stopped_vm(client)
        assert FINAL >= {(await client.execute("query-migrate"))["status"]}
    assert "image" == vm["config"]["fill"]
    assert str(image) == vm["config"]["fill_source"]
    config = tmp_path / "vm.json"
    config.write_text(json.dumps(vm))

    code, out, err = await livemig("replay", "--config", str(config), "--ticks", str(vm["ticks"]))
    assert 0 == code, err
    assert vm["digest"] == json.loads(out)["digest"]

    image.write_bytes(b"changed" + image.read_bytes()[7:])
    code, _, err = await livemig("replay", "--config", str(config), "--ticks", str(vm["ticks"]))
    assert 1 == code
    assert "the image fill's bytes" in err
    assert "changed: digest" in err


async def test_the_mixed_preset_boots_from_the_command_line(daemons):
    source = daemons("source_daemon", *source_args("uvloop", ram_mib=16, fill="mixed"))
    async with qmp(source) as client:
        vm = await client.execute("x-query-vm")
    assert "mixed" == vm["config"]["fill"]
    assert 32 == len(vm["config"]["fill_digest"])
