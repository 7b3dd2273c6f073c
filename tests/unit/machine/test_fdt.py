"""DTB memory: memory nodes, /reserved-memory, /memreserve/; pylibfdt and the built-in walker agree."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest

from pykexec.errors import MachineDescriptionError
from pykexec.machine import fdt
from pykexec.machine.model import Machine
from pykexec.machine.ranges import Range
from pykexec.machine.snapshot import memory_from_fdt

from .dtb import arm64_virt, dtb, reg, u32


@pytest.mark.parametrize("use_libfdt", [True, False])
def test_virt_tree(use_libfdt):
    parsed = fdt.parse(arm64_virt(), use_libfdt=use_libfdt)
    have_libfdt = importlib.util.find_spec("libfdt") is not None
    assert parsed.parser == ("pylibfdt" if use_libfdt and have_libfdt else "pykexec")
    assert parsed.memory == (Range(0x40000000, 0x80000000),)
    assert parsed.reserved_memory == (("linux,cma", Range(0x70000000, 0x4000000)),)
    assert parsed.memreserve == (Range(0x48000000, 0x1000),)


def test_parsers_agree_on_cells():
    blob = dtb({"/": {"#address-cells": u32(1), "#size-cells": u32(1)},
                "/memory": {"device_type": b"memory\0",
                            "reg": reg([(0x80000000, 0x10000000), (0x0, 0x1000)], 1, 1)}})
    ours, theirs = fdt.parse(blob, use_libfdt=False), fdt.parse(blob, use_libfdt=True)
    assert dataclasses.replace(ours, parser=theirs.parser) == theirs
    assert ours.memory == (Range(0, 0x1000), Range(0x80000000, 0x10000000))


def test_memory_map_nests_reservations():
    machine = Machine(arch="arm64", memory=memory_from_fdt(fdt.parse(arm64_virt())))
    assert [(r.type, r.depth) for r in machine.memory] == [("System RAM", 0), ("reserved", 1), ("reserved", 1)]
    assert machine.memblock_free_ranges() == (Range(0x40000000, 0x8000000), Range(0x48001000, 0x27FFF000),
                                              Range(0x74000000, 0x4C000000))


@pytest.mark.parametrize("use_libfdt", [True, False])
def test_not_a_dtb(use_libfdt):
    with pytest.raises(MachineDescriptionError, match="0xd00dfeed"):
        fdt.parse(b"\0" * 64, use_libfdt=use_libfdt)


def test_bad_reg_length_is_named():
    blob = dtb({"/": {"#address-cells": u32(2), "#size-cells": u32(2)},
                "/memory@0": {"device_type": b"memory\0", "reg": b"\0" * 12}})
    with pytest.raises(MachineDescriptionError, match="/memory@0 reg is 12 bytes"):
        fdt.parse(blob, use_libfdt=False)


def test_truncated_structure_block():
    blob = bytearray(arm64_virt())
    # cut the FDT_END token and claim a shorter structure block
    with pytest.raises(MachineDescriptionError):
        fdt.parse(bytes(blob[:-40]), use_libfdt=False)
