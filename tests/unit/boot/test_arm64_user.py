"""The arm64 kexec_load builder (pykexec.boot.arm64): layout, device tree, purgatory, refusals.

The expected values come from booting.rst and the device tree the test
writes, not from the builder: the kernel's base is the lowest 2 MiB boundary
above what the machine reserves, /chosen carries what the test asked for, and
the built purgatory, run under unicorn on the built segments, reaches the
kernel's entry with x0 = the DTB's address (or reports a corrupted segment
on the PL011 the DTB names).
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from types import SimpleNamespace

import libfdt
import pytest

from pykexec.boot import arm64 as builder
from pykexec.boot import elfcore
from pykexec.boot.purgatory import arm64 as pg
from pykexec.errors import LoadRefused, NotLoadable, PlacementError, UsageError
from pykexec.formats import arm64_image
from pykexec.formats.prepare import prepare
from pykexec.machine.model import Machine
from pykexec.machine.ranges import Range, TypedRange
from pykexec.receivers import find
from tests.unit.boot.purgatory_arm64_host import PL011_BASE, RAM, RAM_SIZE, Emulated
from tests.unit.machine.dtb import dtb, reg, u32

MiB = 1 << 20
KERNEL_CODE = (RAM + 0x210000, 0x1000000)    # the running kernel, as /proc/iomem shows it


def image(*, text_offset=0, image_size=8 * MiB, flags=0x2 | 0x8, payload=b"") -> bytes:
    """An arm64 Image header (booting.rst) followed by ``payload``."""
    head = bytearray(64)
    struct.pack_into("<IIQQQQQQII", head, 0, 0x14000010, 0, text_offset, image_size, flags, 0, 0, 0,
                     arm64_image.ARM64_IMAGE_MAGIC, 0)
    return bytes(head) + payload


def virt_dtb(chosen: dict | None = None) -> bytes:
    """A QEMU-virt-like tree with a PL011 console named through an alias with options."""
    return dtb({
        "/": {"#address-cells": u32(2), "#size-cells": u32(2), "compatible": b"linux,dummy-virt\0"},
        "/memory@40000000": {"device_type": b"memory\0", "reg": reg([(RAM, RAM_SIZE)])},
        "/pl011@9000000": {"compatible": b"arm,pl011\0arm,primecell\0", "reg": reg([(PL011_BASE, 0x1000)])},
        "/aliases": {"serial0": b"/pl011@9000000\0"},
        "/chosen": chosen if chosen is not None else {
            "bootargs": b"console=ttyAMA0 old\0", "stdout-path": b"serial0:115200n8\0",
            "linux,elfcorehdr": struct.pack(">QQ", 0x50000000, 0x1000),
            "linux,usable-memory-range": struct.pack(">QQ", 0x50000000, 0x100000),
            "linux,initrd-start": struct.pack(">Q", 0x48000000),
            "linux,initrd-end": struct.pack(">Q", 0x48100000)},
    })


def machine(**kw) -> Machine:
    memory = (TypedRange(RAM, RAM_SIZE, "System RAM", 0), TypedRange(*KERNEL_CODE, "Kernel code", 1))
    return Machine(arch="arm64", page_size=4096, memory=memory, memory_source="description", **kw)


def seeds(n: int) -> bytes:
    return bytes((0xA0 + i) & 0xFF for i in range(n))


def build(kernel: bytes = None, *, initrd=b"INITRD-TOKEN" * 100, cmdline="console=ttyAMA0 marker=42",
          tree=None, **kw):
    prepared = prepare(kernel if kernel is not None else image(payload=bytes(4096)))
    return builder.build_arm64_load(prepared, initrd=initrd, cmdline=cmdline, crash=False,
                                    machine=kw.pop("machine", machine()), dtb=tree or virt_dtb(),
                                    getrandom=seeds, **kw)


def chosen(blob: bytes) -> dict:
    f = libfdt.Fdt(bytearray(blob))
    off = f.path_offset("/chosen")
    out = {}
    poff = f.first_property_offset(off, (libfdt.NOTFOUND,))
    while poff >= 0:
        p = f.get_property_by_offset(poff)
        out[p.name] = bytes(p)
        poff = f.next_property_offset(poff, (libfdt.NOTFOUND,))
    return out


def test_the_table_serves_arm64_images_through_kexec_load():
    layer = arm64_image.parse(image())
    entry = find("arm64", layer, "linux-user")
    assert entry is not None and entry.builder == "pykexec.boot.arm64:build_arm64_load"


def test_kernel_sits_at_the_lowest_free_2mib_base_plus_text_offset():
    load = build(image(text_offset=0x80000, payload=bytes(4096)))
    kernel = load.segment("kernel")
    first_free = KERNEL_CODE[0] + KERNEL_CODE[1]            # above the running kernel
    base = -(-first_free // (2 * MiB)) * (2 * MiB)
    assert kernel.mem == base + 0x80000
    assert kernel.memsz >= 8 * MiB and kernel.memsz % 4096 == 0
    assert bytes(kernel.buf) == image(text_offset=0x80000, payload=bytes(4096))
    # the purgatory is what kexec_load enters; it enters the kernel with x0 = the DTB
    assert load.entry == load.segment("purgatory").mem
    assert load.plan.entry_arg == load.segment("dtb").mem


def test_initrd_dtb_and_purgatory_go_above_the_kernel_within_32gib_of_its_gib():
    load = build()
    kernel = load.segment("kernel")
    limit = (kernel.mem & ~((1 << 30) - 1)) + (32 << 30)
    spans = sorted((s.mem, s.end, s.role) for s in load.segments)
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        assert end <= start, f"{a} overlaps {b}"
    for role in ("initrd", "dtb", "purgatory"):
        seg = load.segment(role)
        assert kernel.end <= seg.mem and seg.end <= min(limit, RAM + RAM_SIZE), role
        assert seg.mem % 4096 == 0
    assert bytes(load.segment("initrd").buf) == b"INITRD-TOKEN" * 100


def test_no_segment_touches_the_running_kernel_or_leaves_ram():
    load = build()
    for s in load.segments:
        assert RAM <= s.mem and s.end <= RAM + RAM_SIZE
        assert s.end <= KERNEL_CODE[0] or s.mem >= KERNEL_CODE[0] + KERNEL_CODE[1], s.role


def test_chosen_carries_the_command_line_initrd_and_fresh_seeds():
    load = build()
    initrd = load.segment("initrd")
    props = chosen(bytes(load.segment("dtb").buf))
    assert props["bootargs"] == b"console=ttyAMA0 marker=42\0"
    assert struct.unpack(">Q", props["linux,initrd-start"])[0] == initrd.mem
    assert struct.unpack(">Q", props["linux,initrd-end"])[0] == initrd.mem + len(b"INITRD-TOKEN" * 100)
    assert props["kaslr-seed"] == seeds(8)
    assert props["rng-seed"] == seeds(128)  # drivers/of/kexec.c RNG_SEED_SIZE
    # the running kernel's kdump properties do not reach a normal load
    assert "linux,elfcorehdr" not in props and "linux,usable-memory-range" not in props
    assert props["stdout-path"] == b"serial0:115200n8\0"
    tree = load.plan.device_tree
    assert tree.to_json()["removed"] == ["linux,elfcorehdr", "linux,usable-memory-range"]
    assert "kaslr-seed" in tree.to_json()["set"] and seeds(8).hex() not in str(load.plan.to_json())


def test_without_an_initrd_the_old_initrd_properties_go():
    props = chosen(bytes(build(initrd=None).segment("dtb").buf))
    assert "linux,initrd-start" not in props and "linux,initrd-end" not in props


def test_without_a_command_line_the_device_trees_bootargs_stay():
    load = build(cmdline=None)
    assert chosen(bytes(load.segment("dtb").buf))["bootargs"] == b"console=ttyAMA0 old\0"
    assert load.cmdline == "console=ttyAMA0 old"


def test_a_tree_without_chosen_gets_one():
    tree = dtb({"/": {"#address-cells": u32(2), "#size-cells": u32(2)}})
    load = build(tree=tree)
    props = chosen(bytes(load.segment("dtb").buf))
    assert props["bootargs"] == b"console=ttyAMA0 marker=42\0" and "kaslr-seed" in props
    assert any("names no console" in n for n in load.notes)


def test_the_uki_dtb_is_used_when_none_is_given():
    prepared = dataclasses.replace(prepare(image(payload=bytes(4096))), dtb=virt_dtb())
    load = builder.build_arm64_load(prepared, initrd=None, cmdline="x", crash=False, machine=machine(),
                                    getrandom=seeds, sys_root="/nonexistent")
    assert chosen(bytes(load.segment("dtb").buf))["bootargs"] == b"x\0"


def test_the_purgatory_reaches_the_kernel_with_x0_the_dtb():
    load = _run_purgatory_setup(build())
    outcome = load.run(load.kernel_entry)
    assert not outcome.refused and outcome.stopped_at == load.kernel_entry
    assert outcome.regs["x0"] == load.dtb and outcome.regs["x1"] == outcome.regs["x2"] == outcome.regs["x3"] == 0


def test_a_segment_changed_after_hashing_is_reported_on_the_dtbs_pl011():
    built = build()
    initrd = built.segment("initrd")
    emu = _run_purgatory_setup(built)
    emu.write(initrd.mem + 5, b"X")
    outcome = emu.run(emu.kernel_entry)
    assert outcome.refused
    assert f"{initrd.mem:016x}" in outcome.serial.lower() or f"{initrd.mem:x}" in outcome.serial.lower()


def test_no_checks_leaves_no_regions():
    load = build(checks=False)
    params = pg.PARAMS.unpack(bytes(load.segment("purgatory").buf)[pg.load().params_offset:])
    assert params["nr_regions"] == 0 and params["flags"] & pg.PG_SKIP_CHECKS


def _run_purgatory_setup(load):
    """The built segments in unicorn's RAM, the purgatory ready to run from its segment."""
    pur = load.segment("purgatory")
    params = pg.PARAMS.unpack(bytes(pur.buf)[pg.load().params_offset:])
    assert params["uart_type"] == pg.UART_PL011 and params["uart_base"] == PL011_BASE
    emu = Emulated(bytes(pur.buf), base=pur.mem, uart=pg.Uart.pl011(PL011_BASE))
    for s in load.segments:
        if s.role != "purgatory":
            emu.write(s.mem, bytes(s.buf))
            assert hashlib.sha256(bytes(s.buf)).digest() in bytes(pur.buf), s.role
    emu.kernel_entry, emu.dtb = load.segment("kernel").mem, load.segment("dtb").mem
    return emu


@pytest.mark.parametrize("kernel, why", [
    (image(image_size=0), "image_size is 0"),
    (image(flags=0x1 | 0x2), "big-endian"),
])
def test_images_booting_rst_rules_out_are_refused(kernel, why):
    with pytest.raises(PlacementError, match=why):
        build(kernel)


def test_a_page_size_the_cpu_lacks_is_refused_with_the_register_named():
    kernel = image(flags=0x6 | 0x8, payload=bytes(4096))         # 64K pages
    with pytest.raises(PlacementError, match=r"64K pages.*only 4K, 16K \(ID_AA64MMFR0_EL1\)"):
        build(kernel, machine=machine(cpu_page_sizes=(4096, 16384)))
    assert build(kernel, machine=machine(cpu_page_sizes=(4096, 65536))).segment("kernel")


def test_no_readable_device_tree_is_one_clear_line(tmp_path):
    with pytest.raises(LoadRefused, match=r"no device tree.*firmware/fdt.*pass --dtb FILE"):
        builder.build_arm64_load(prepare(image(payload=bytes(64))), initrd=None, cmdline="", crash=False,
                                 machine=machine(), sys_root=tmp_path)


def test_a_device_tree_over_2mib_is_refused():
    big = virt_dtb({"bootargs": b"x\0", "blob": bytes(2 << 20)})
    with pytest.raises(LoadRefused, match="at most 2097152"):
        build(tree=big)


CRASH = (RAM + 0x2000000, 0x1000000)                            # 16 MiB at RAM + 32 MiB


def test_a_crash_load_lives_in_the_crash_region_and_the_tree_says_where_the_dump_is():
    crash_machine = dataclasses.replace(machine(), crashk_res=Range(*CRASH), memory=machine().memory + (
        TypedRange(*CRASH, "Crash kernel", 1),))
    sources = elfcore.synthetic_sources(2, base=RAM + 0x3F00000)
    load = builder.build_arm64_load(prepare(image(image_size=4 * MiB, payload=bytes(4096))),
                                    initrd=b"capture-initrd", cmdline="console=ttyAMA0 capture", crash=True,
                                    machine=crash_machine, dtb=virt_dtb(), getrandom=seeds, crash_sources=sources)
    assert load.crash and load.plan.validate() == ()
    for s in load.segments:
        assert CRASH[0] <= s.mem and s.end <= CRASH[0] + CRASH[1], s.role
    assert load.segment("kernel").mem % (2 * MiB) == 0
    elf = load.segment("elfcorehdr")
    ehdr, phdrs = elfcore.parse(bytes(elf.buf))
    assert ehdr["e_machine"] == 183                                 # EM_AARCH64
    assert [p["p_offset"] for p in phdrs if p["p_type"] == elfcore.PT_NOTE] == \
        [n.paddr for n in sources.cpu_notes] + [sources.vmcoreinfo.paddr]
    loads = sorted((p["p_paddr"], p["p_memsz"]) for p in phdrs if p["p_type"] == elfcore.PT_LOAD)
    # all of RAM but the crash region (the running kernel's own pages are in the dump)
    assert loads == [(RAM, CRASH[0] - RAM), (CRASH[0] + CRASH[1], RAM + RAM_SIZE - CRASH[0] - CRASH[1])]
    props = chosen(bytes(load.segment("dtb").buf))
    assert struct.unpack(">QQ", props["linux,elfcorehdr"]) == (elf.mem, len(elf.buf))
    assert struct.unpack(">QQ", props["linux,usable-memory-range"]) == CRASH
    assert props["bootargs"] == b"console=ttyAMA0 capture\0"


def test_a_crash_load_without_a_crash_region_is_one_line():
    with pytest.raises(PlacementError, match="crashkernel=SIZE"):
        builder.build_arm64_load(prepare(image(payload=bytes(64))), initrd=None, cmdline="", crash=True,
                                 machine=machine(), dtb=virt_dtb(), crash_sources=elfcore.synthetic_sources(1))


def test_modules_and_foreign_images_are_refused():
    with pytest.raises(UsageError, match="--module"):
        build(modules=("xen",))
    other = SimpleNamespace(kernel_layer=SimpleNamespace(format="bzimage"), kernel=b"", dtb=None)
    with pytest.raises(NotLoadable, match="not an arm64 Image"):
        builder.build_arm64_load(other, initrd=None, cmdline="", crash=False, machine=machine(), dtb=virt_dtb())


def test_an_unknown_granule_is_a_note_not_a_refusal():
    load = build(image(flags=0x4 | 0x8, payload=bytes(4096)))     # 16K pages, the CPU's granules unknown
    assert any("16K pages" in n and "4K" in n and "unknown" in n for n in load.notes)
    assert not any("pages" in n for n in build().notes)           # 4K on a 4K kernel: nothing to say


def _board(compatible: bytes, bootargs: bytes) -> bytes:
    return dtb({"/": {"#address-cells": u32(2), "#size-cells": u32(2), "compatible": compatible},
                "/chosen": {"bootargs": bootargs}})


@pytest.mark.parametrize("auto, expected, source", [
    # systemd-stub compares the first root compatible strings: the first .dtbauto that matches wins
    ((b"acme,other\0", b"linux,dummy-virt\0acme,x\0", b"linux,dummy-virt\0"), b"auto1", ".dtbauto #1"),
    ((b"acme,other\0", b"acme,x\0linux,dummy-virt\0"), b"uki", ".dtb"),   # a later string does not count
])
def test_dtbauto_is_chosen_by_the_running_trees_compatible(tmp_path, auto, expected, source):
    (tmp_path / "firmware").mkdir()
    (tmp_path / "firmware" / "fdt").write_bytes(virt_dtb())
    prepared = dataclasses.replace(
        prepare(image(payload=bytes(4096))), dtb=_board(b"acme,uki\0", b"uki\0"),
        dtbauto=tuple(_board(c, b"auto%d\0" % i) for i, c in enumerate(auto)))
    load = builder.build_arm64_load(prepared, initrd=None, cmdline=None, crash=False, machine=machine(),
                                    getrandom=seeds, sys_root=tmp_path)
    assert chosen(bytes(load.segment("dtb").buf))["bootargs"] == expected + b"\0"
    assert source in load.plan.device_tree.source
