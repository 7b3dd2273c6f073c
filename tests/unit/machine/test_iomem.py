"""/proc/iomem parsing, on real dumps in tests/data/machines and on broken ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from pykexec.errors import MachineDescriptionError
from pykexec.machine import iomem
from pykexec.machine.model import Machine, crash_from_iomem
from pykexec.machine.ranges import Range

DATA = Path(__file__).resolve().parents[2] / "data" / "machines"


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_qemu_q35_crashkernel_dump():
    parsed = iomem.parse(read("qemu-q35-1g-crashkernel256m-debian6.1.iomem"))
    assert not parsed.addresses_hidden
    crash = [r for r in parsed.resources if r.type == "Crash kernel"]
    assert crash == [crash[0]] and crash[0].range == Range.inclusive(0x2F000000, 0x3EFFFFFF)
    assert crash[0].depth == 1
    machine = Machine(memory=parsed.resources)
    assert machine.walkable_ram() == (Range.inclusive(0x1000, 0x9FBFF), Range.inclusive(0x100000, 0x3FFDEFFF))
    assert crash_from_iomem(parsed.resources) == (Range.inclusive(0x2F000000, 0x3EFFFFFF), None)


def test_host_dump_round_trips():
    text = read("dev-host-firecracker-6.18.iomem")
    parsed = iomem.parse(text)
    assert iomem.parse(iomem.format_iomem(parsed.resources)).resources == parsed.resources
    assert len(Machine(memory=parsed.resources).walkable_ram()) == 3


def test_unprivileged_dump_is_detected():
    parsed = iomem.parse(read("dev-host-unprivileged.iomem"))
    assert parsed.addresses_hidden


def test_low_and_high_crash_regions():
    text = ("00001000-0009ffff : System RAM\n"
            "00100000-bfffffff : System RAM\n"
            "  a0000000-afffffff : Crash kernel\n"
            "100000000-43fffffff : System RAM\n"
            "  400000000-43fffffff : Crash kernel\n")
    high, low = crash_from_iomem(iomem.parse(text).resources)
    assert high == Range(0x400000000, 0x40000000) and low == Range(0xA0000000, 0x10000000)


def test_driver_managed_and_nested_ram_are_not_walked_twice():
    text = ("00100000-3fffffff : System RAM\n"
            "  00200000-002fffff : System RAM\n"
            "140000000-17fffffff : dax0.0\n"
            "  140000000-17fffffff : System RAM (kmem)\n"
            "180000000-1bfffffff : System RAM (virtio_mem)\n")
    m = Machine(memory=iomem.parse(text).resources)
    assert [r.type for r in m.system_ram()] == ["System RAM", "System RAM (kmem)", "System RAM (virtio_mem)"]
    assert m.walkable_ram() == (Range(0x100000, 0x3FF00000),)


@pytest.mark.parametrize("text, line, words", [
    ("00001000-0009fbff : System RAM\nnot an iomem line\n", 2, "START-END"),
    ("00001000-0009fbff : System RAM\n   00002000-00002fff : odd\n", 2, "multiple of 2"),
    ("00001000-0009fbff : System RAM\n    00002000-00002fff : too deep\n", 2, "nested 2 levels"),
    ("00002000-00001000 : backwards\n", 1, "below start"),
    ("00001000-00001fff : RAM\n  00003000-00003fff : outside\n", 2, "outside its parent"),
])
def test_malformed_lines_are_named(text, line, words):
    with pytest.raises(MachineDescriptionError) as e:
        iomem.parse(text, source="dump")
    assert e.value.line == line and words in str(e.value) and e.value.exit_code == 2
    assert str(e.value).startswith(f"dump line {line}:")
