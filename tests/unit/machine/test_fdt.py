"""DTBs: memory nodes, /reserved-memory, /memreserve/, /chosen, and edits to /chosen.

The blobs come from the independent writer in :mod:`.dtb`; edits are read back
with pylibfdt itself and, where it is installed, with dtc.
"""

from __future__ import annotations

import shutil
import struct
import subprocess

import libfdt
import pytest

from pykexec.errors import FormatError, MachineDescriptionError
from pykexec.machine import fdt
from pykexec.machine.model import Machine
from pykexec.machine.ranges import Range
from pykexec.machine.snapshot import memory_from_fdt

from .dtb import arm64_virt, dtb, reg, u32


def test_virt_tree():
    parsed = fdt.parse(arm64_virt())
    assert parsed.memory == (Range(0x40000000, 0x80000000),)
    assert parsed.reserved_memory == (("linux,cma", Range(0x70000000, 0x4000000)),)
    assert parsed.memreserve == (Range(0x48000000, 0x1000),)


def test_reg_follows_the_parents_cells():
    blob = dtb({"/": {"#address-cells": u32(1), "#size-cells": u32(1)},
                "/memory": {"device_type": b"memory\0",
                            "reg": reg([(0x80000000, 0x10000000), (0x0, 0x1000)], 1, 1)}})
    assert fdt.parse(blob).memory == (Range(0, 0x1000), Range(0x80000000, 0x10000000))


def test_memory_map_nests_reservations():
    machine = Machine(arch="arm64", memory=memory_from_fdt(fdt.parse(arm64_virt())))
    assert [(r.type, r.depth) for r in machine.memory] == [("System RAM", 0), ("reserved", 1), ("reserved", 1)]
    assert machine.memblock_free_ranges() == (Range(0x40000000, 0x8000000), Range(0x48001000, 0x27FFF000),
                                              Range(0x74000000, 0x4C000000))


def test_not_a_dtb():
    with pytest.raises(MachineDescriptionError, match="0xd00dfeed"):
        fdt.parse(b"\0" * 64)


def test_bad_reg_length_is_named():
    blob = dtb({"/": {"#address-cells": u32(2), "#size-cells": u32(2)},
                "/memory@0": {"device_type": b"memory\0", "reg": b"\0" * 12}})
    with pytest.raises(MachineDescriptionError, match="/memory@0 reg is 12 bytes"):
        fdt.parse(blob)


def test_truncated_blob():
    with pytest.raises(MachineDescriptionError, match="totalsize 550 is larger than the 510-byte blob"):
        fdt.parse(arm64_virt()[:-40])


def test_sizes_from_the_header():
    blob = arm64_virt()
    assert fdt.totalsize(blob[:8]) == len(blob) and fdt.totalsize(bytes(8)) is None
    assert fdt.packed_size(blob) == len(blob)
    assert fdt.packed_size(blob + bytes(100)) == len(blob)


# ---------------------------------------------------------------- /chosen


def test_chosen_decodes_strings_and_cells():
    blob = dtb({"/": {}, "/chosen": {"bootargs": b"console=ttyAMA0 quiet\0",
                                     "linux,initrd-start": struct.pack(">Q", 0x48000000),
                                     "linux,initrd-end": u32(0x48100000), "rng-seed": bytes(5)}})
    assert fdt.chosen(blob) == {"bootargs": "console=ttyAMA0 quiet", "linux,initrd-start": 0x48000000,
                                "linux,initrd-end": 0x48100000, "rng-seed": bytes(5)}


def test_no_chosen_is_none():
    assert fdt.chosen(dtb({"/": {}})) is None


def test_chosen_of_garbage_is_a_format_error():
    with pytest.raises(FormatError, match="fdt /chosen at offset 0x0: not a flattened device tree"):
        fdt.chosen(b"\xd0\x0d\xfe" + bytes(61))


# ---------------------------------------------------------------- editing


def kexec_edits(blob: bytes) -> tuple[bytes, list[bool]]:
    """What an arm64 kexec_load loader does to the running DTB's /chosen; the edited blob
    and whether each of the two crash properties was there to delete."""
    ed = fdt.FdtEditor(blob)
    ed.set_string("/chosen", "bootargs", "console=ttyAMA0 root=/dev/vda")
    ed.set_u64("/chosen", "linux,initrd-start", 0x48000000)
    ed.set_u64("/chosen", "linux,initrd-end", 0x48123456)
    ed.set_u64("/chosen", "kaslr-seed", 0x0123456789ABCDEF)
    ed.set("/chosen", "rng-seed", bytes(range(64)))
    deleted = [ed.delete("/chosen", "linux,elfcorehdr"), ed.delete("/chosen", "linux,usable-memory-range")]
    assert not ed.delete("/chosen", "linux,elfcorehdr")
    assert not ed.delete("/no-such-node", "x")
    return ed.blob(), deleted


def crashed_tree() -> bytes:
    """A running kdump kernel's tree: /chosen carries what the next kernel must not inherit."""
    return dtb({"/": {"#address-cells": u32(2), "#size-cells": u32(2)},
                "/memory@40000000": {"device_type": b"memory\0", "reg": reg([(0x40000000, 0x80000000)])},
                "/chosen": {"bootargs": b"old\0", "linux,elfcorehdr": reg([(0x5F000000, 0x10000)]),
                            "linux,usable-memory-range": reg([(0x50000000, 0x10000000)])}})


def read_back(blob: bytes) -> dict[str, bytes]:
    f = libfdt.Fdt(blob)
    off = f.path_offset("/chosen")
    out, poff = {}, f.first_property_offset(off, (libfdt.NOTFOUND,))
    while poff >= 0:
        p = f.get_property_by_offset(poff)
        out[p.name] = bytes(p)
        poff = f.next_property_offset(poff, (libfdt.NOTFOUND,))
    return out


WANT = {"bootargs": b"console=ttyAMA0 root=/dev/vda\0", "linux,initrd-start": bytes.fromhex("0000000048000000"),
        "linux,initrd-end": bytes.fromhex("0000000048123456"), "kaslr-seed": bytes.fromhex("0123456789abcdef"),
        "rng-seed": bytes(range(64))}


@pytest.mark.parametrize("tree", [crashed_tree, arm64_virt, lambda: dtb({"/": {}})],
                         ids=["with-crash-props", "virt", "no-chosen"])
def test_edits_read_back_through_pylibfdt(tree):
    before = tree()
    after, deleted = kexec_edits(before)
    assert deleted == [tree is crashed_tree] * 2
    assert len(after) > len(before) or tree is crashed_tree       # the writer leaves no room: it grew
    assert read_back(after) == WANT
    if tree is not crashed_tree:
        assert fdt.parse(after) == fdt.parse(before)               # nothing else moved


def test_setting_twice_keeps_the_last_value():
    ed = fdt.FdtEditor(arm64_virt())
    ed.set_u64("/chosen", "linux,initrd-end", 1)
    ed.set_u64("/chosen", "linux,initrd-end", 2)
    assert fdt.chosen(ed.blob())["linux,initrd-end"] == 2


def test_nodes_are_made_with_their_parents():
    ed = fdt.FdtEditor(dtb({"/": {}}))
    ed.set_u64("/a/b/c", "x", 7)
    f = libfdt.Fdt(ed.blob())
    assert f.getprop(f.path_offset("/a/b/c"), "x").as_uint64() == 7


@pytest.mark.skipif(shutil.which("dtc") is None, reason="dtc (Debian device-tree-compiler) is not installed")
def test_edits_read_back_through_dtc(tmp_path):
    after, _ = kexec_edits(crashed_tree())
    (tmp_path / "edited.dtb").write_bytes(after)
    dts = subprocess.run(["dtc", "-q", "-I", "dtb", "-O", "dts", str(tmp_path / "edited.dtb")],
                         capture_output=True, text=True, check=True).stdout
    assert 'bootargs = "console=ttyAMA0 root=/dev/vda";' in dts
    assert "linux,initrd-start = <0x00 0x48000000>;" in dts
    assert "kaslr-seed = <0x1234567 0x89abcdef>;" in dts
    assert "elfcorehdr" not in dts and "usable-memory-range" not in dts
    (tmp_path / "edited.dts").write_text(dts)
    again = subprocess.run(["dtc", "-q", "-I", "dts", "-O", "dtb", str(tmp_path / "edited.dts")],
                           capture_output=True, check=True).stdout
    assert read_back(again) == WANT


def test_editing_garbage_names_the_magic():
    with pytest.raises(FormatError, match="fdt magic at offset 0x0: not a flattened device tree"):
        fdt.FdtEditor(bytes(64))


def test_a_broken_structure_block_names_the_node_and_property():
    blob = bytearray(arm64_virt())
    off_struct = struct.unpack_from(">I", blob, 8)[0]
    blob[off_struct:off_struct + 4] = u32(0x77)                       # not a structure token
    with pytest.raises(FormatError, match=r"fdt /chosen.*: libfdt: FDT_ERR_"):
        fdt.FdtEditor(bytes(blob)).set_string("/chosen", "bootargs", "x")


def test_a_relative_path_is_refused():
    with pytest.raises(FormatError, match="chosen: a node path must be absolute"):
        fdt.FdtEditor(arm64_virt()).set_u64("chosen", "x", 1)


def test_stdout_device_follows_an_alias_and_drops_the_options():
    tree = dtb({
        "/": {"#address-cells": u32(2), "#size-cells": u32(2)},
        "/pl011@9000000": {"compatible": b"arm,pl011\0arm,primecell\0", "reg": reg([(0x9000000, 0x1000)])},
        "/aliases": {"serial0": b"/pl011@9000000\0"},
        "/chosen": {"stdout-path": b"serial0:115200n8\0"},
    })
    dev = fdt.stdout_device(tree)
    assert dev == fdt.StdoutDevice("/pl011@9000000", ("arm,pl011", "arm,primecell"), 0x9000000, 0, 1)


def test_stdout_device_translates_through_bus_ranges_and_reads_the_8250_binding():
    # a 1-cell bus at CPU address 0x1_2000_0000 mapping its 0x0-0x100000 window
    tree = dtb({
        "/": {"#address-cells": u32(2), "#size-cells": u32(2)},
        "/soc": {"#address-cells": u32(1), "#size-cells": u32(1),
                 "ranges": u32(0) + (0x120000000).to_bytes(8, "big") + u32(0x100000)},
        "/soc/serial@3000": {"compatible": b"snps,dw-apb-uart\0", "reg": u32(0x3000) + u32(0x100),
                             "reg-shift": u32(2), "reg-io-width": u32(4)},
        "/chosen": {"linux,stdout-path": b"/soc/serial@3000\0"},
    })
    dev = fdt.stdout_device(tree)
    assert (dev.address, dev.reg_shift, dev.reg_io_width) == (0x120003000, 2, 4)


def test_stdout_device_is_none_when_unnamed_unknown_or_unmapped():
    base = {"/": {"#address-cells": u32(2), "#size-cells": u32(2)}}
    assert fdt.stdout_device(dtb(base)) is None
    assert fdt.stdout_device(dtb({**base, "/chosen": {"stdout-path": b"/nowhere\0"}})) is None
    unmapped = dtb({**base, "/bus": {"#address-cells": u32(1), "#size-cells": u32(1)},
                    "/bus/uart@0": {"reg": u32(0) + u32(0x100)},
                    "/chosen": {"stdout-path": b"/bus/uart@0\0"}})
    assert fdt.stdout_device(unmapped) is None   # a bus without ranges does not map into the CPU's space
