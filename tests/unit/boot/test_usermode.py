"""Whole kexec_load builds: every segment filled, the purgatory patched, the plan validated."""

from __future__ import annotations

import hashlib
import struct

import pytest

from pykexec.boot import elfcore, purgatory, usermode
from pykexec.boot.bootparam import BOOT_PARAMS, SETUP_E820_EXT, SETUP_EFI, SETUP_RNG_SEED
from pykexec.boot.firmware import Firmware, read_firmware
from pykexec.boot.multiboot_info import Module, parse_multiboot2_info
from pykexec.errors import LoadRefused, NotLoadable, PlacementError, UsageError, UserLoadRefused
from pykexec.formats.bzimage import SETUP_HEADER
from pykexec.machine import Range
from pykexec.plan import plan
from pykexec.plan.validate import validate_linux
from pykexec.formats.prepare import prepare
from tests import builders
from tests.usermode_helpers import corrupted, read_zero_page

from .conftest import fixed_random, many_ranges, qemu_crash, qemu_pc
from .test_firmware import efi_tree
from .test_multiboot_info import xen_elf

INITRD = bytes(range(256)) * 4000
CMDLINE = "console=ttyS0 stage=2"


def build(image: bytes, **kw):
    kw.setdefault("machine", qemu_pc())
    kw.setdefault("initrd", INITRD)
    kw.setdefault("cmdline", CMDLINE)
    kw.setdefault("crash", False)
    kw.setdefault("firmware", Firmware.none())
    kw.setdefault("getrandom", fixed_random)
    kw.setdefault("dev_mem", None)
    return usermode.build_user_load(prepare(image), **kw)


def params_of(load):
    """The purgatory's parameter block, as loaded."""
    img = purgatory.load()
    raw = load.segment("purgatory").buf
    block = raw[img.params_offset:img.params_offset + purgatory.PARAMS.size]
    regions = [purgatory.REGION.unpack_from(block, purgatory.PARAMS.offset("regions") + 64 * i)
               for i in range(purgatory.PARAMS.get(block, "nr_regions"))]
    return block, regions


def check_digests(load):
    """Every non-purgatory segment is a purgatory region: a digest of its bytes, zeroes to memsz."""
    _, regions = params_of(load)
    by_start = {start: (length, zero, digest) for start, length, zero, digest in regions}
    others = [s for s, p in zip(load.segments, load.plan.segments) if p.role != "purgatory"]
    assert len(regions) == len(others)
    for seg in others:
        length, zero, digest = by_start[seg.mem]
        assert length == len(seg.buf) and length + zero == seg.memsz
        assert digest == hashlib.sha256(seg.buf).digest()


# -- bzImage --------------------------------------------------------------------------------------

def test_bzimage_32_bit_entry():
    # memtest86+'s header shape: 2.12, XLF_KERNEL_64 without XLF_CAN_BE_LOADED_ABOVE_4G, not relocatable.
    image = builders.bzimage(version=0x20C, xloadflags=0x9, relocatable_kernel=0, loadflags=0x01,
                             init_size=0x6ACF8, cmdline_size=255, initrd_addr_max=0xFFFFFFFF)
    load = build(image, initrd=None)
    kernel, params = load.segment("kernel"), load.segment("boot-params")
    assert (kernel.mem, kernel.memsz) == (0x100000, 0x6B000) and kernel.buf == image[5 * 512:]
    assert all(s.end <= 1 << 32 for s in load.plan.segments)
    block, _ = params_of(load)
    # boot.rst "32-bit Boot Protocol": enter at the protected-mode kernel's first byte, %esi = boot_params
    assert purgatory.PARAMS.get(block, "flags") == purgatory.PG_ENTRY32
    assert (purgatory.PARAMS.get(block, "rip"), purgatory.PARAMS.get(block, "rsi")) == (0x100000, params.mem)
    assert (purgatory.PARAMS.get(block, "rax"), purgatory.PARAMS.get(block, "rbx")) == (0, 0)
    page = read_zero_page(params.buf)
    assert SETUP_HEADER.get(params.buf, "code32_start") == 0x100000
    assert params.buf[page["cmd_line_ptr"] - params.mem:].split(b"\0")[0] == CMDLINE.encode()
    assert page["efi_systab"] == 0 and page["e820_entries"] > 0
    check_digests(load)


# iPXE's ipxe.lkrn header: 2.07, LOADED_HIGH, not relocatable, no 32-bit entry.
IPXE_LIKE = dict(version=0x207, loadflags=0x01, xloadflags=0, relocatable_kernel=0, code32_start=0,
                 cmdline_size=0x7FF, initrd_addr_max=0x7FFFFFFF)


def test_bzimage_real_mode_entry():
    image = builders.bzimage(**IPXE_LIKE)
    load = build(image)
    setup, kernel, pur = load.segment("boot-params"), load.segment("kernel"), load.segment("purgatory")
    # boot.rst "Loading the Rest of the Kernel": real-mode code, its heap and stack in 64 KiB, the command
    # line after them, all below 0xA0000; kexec-tools puts the purgatory above the real-mode code
    assert setup.mem % 16 == 0 and setup.mem + len(setup.buf) <= 0xA0000
    assert setup.mem < pur.mem and pur.end <= 0xA0000
    # boot sector and setup code as they are, around the setup header (0x1f1 to 0x290 here)
    assert setup.buf[:0x1F1] == image[:0x1F1] and setup.buf[0x290:5 * 512] == image[0x290:5 * 512]
    assert setup.buf[0x10000:] == CMDLINE.encode() + b"\0"
    assert kernel.mem == 0x100000 and kernel.buf == image[5 * 512:]
    hdr = {n: SETUP_HEADER.get(setup.buf, n) for n in ("type_of_loader", "loadflags", "heap_end_ptr",
                                                          "cmd_line_ptr", "ramdisk_image", "ramdisk_size",
                                                          "code32_start")}
    initrd = load.segment("initrd")
    assert hdr == {"type_of_loader": 0xD0, "loadflags": 0x81, "heap_end_ptr": 0xFE00 - 0x200,
                   "cmd_line_ptr": setup.mem + 0x10000, "ramdisk_image": initrd.mem,
                   "ramdisk_size": len(INITRD), "code32_start": 0x100000}
    block, _ = params_of(load)
    assert purgatory.PARAMS.get(block, "flags") == purgatory.PG_ENTRY16
    seg = setup.mem >> 4
    assert {n: purgatory.PARAMS.get(block, n) for n in purgatory.REAL_MODE_FIELDS} == {
        "cs": seg + 0x20, "ip": 0, "ds": seg, "es": seg, "fs": seg, "gs": seg, "ss": seg, "sp": 0xFE00}
    assert any("real-mode entry" in n for n in load.notes)
    check_digests(load)
    assert [(s.role, s.mem, s.memsz) for s in plan(prepare(image), target="linux-user", machine=qemu_pc(),
                                                   initrd=INITRD, cmdline=CMDLINE).segments] \
        == [(s.role, s.mem, s.memsz) for s in load.plan.segments]


def test_a_bzimage64_enters_where_it_is_asked():
    # kexec-tools' --entry-32bit and --real-mode on a bzImage64 (Debian's 6.1 header: 2.15, relocatable at
    # 2 MiB): the purgatory enters startup_32 with %esi = boot_params, or the real-mode code at setup + 0x200
    image = builders.bzimage(version=0x20F, xloadflags=0x7F, loadflags=0x81, kernel_alignment=0x200000,
                             init_size=0x3378000, pref_address=0x1000000, initrd_addr_max=0x7FFFFFFF)
    entry_flags = purgatory.PG_ENTRY32 | purgatory.PG_ENTRY16
    flags = {bits: purgatory.PARAMS.get(params_of(build(image, entry=bits))[0], "flags") & entry_flags
             for bits in (None, 64, 32, 16)}
    assert flags == {None: 0, 64: 0, 32: purgatory.PG_ENTRY32, 16: purgatory.PG_ENTRY16}
    load = build(image, entry=32)
    block, _ = params_of(load)
    kernel, params = load.segment("kernel"), load.segment("boot-params")
    assert kernel.mem == 0x200000 and kernel.buf == image[5 * 512:]
    assert (purgatory.PARAMS.get(block, "rip"), purgatory.PARAMS.get(block, "rsi")) == (kernel.mem, params.mem)
    check_digests(load)
    assert [(s.role, s.mem, s.memsz) for s in plan(prepare(image), target="linux-user", machine=qemu_pc(),
                                                   initrd=INITRD, cmdline=CMDLINE, entry=16).segments] \
        == [(s.role, s.mem, s.memsz) for s in build(image, entry=16).plan.segments]
    with pytest.raises(UsageError, match="--entry chooses a bzImage's entry, and this image is elf"):
        build(builders.elf64(), entry=32, initrd=None)


def test_memdisk_takes_the_real_mode_entry_despite_its_code32_start():
    # syslinux's memdisk header: 2.03, LOADED_HIGH, code32_start 0x100000 (its own protected-mode code, which
    # reads memdisk16.asm's registers, not boot_params), kernel_version pointing at "MEMDISK 6.04 ..."
    image = bytearray(builders.bzimage(version=0x203, loadflags=0x01, xloadflags=0, code32_start=0x100000,
                                       kernel_version=0x100))
    image[0x300:0x316] = b"MEMDISK 6.04 20200816\0"
    load = build(bytes(image))
    block, _ = params_of(load)
    assert purgatory.PARAMS.get(block, "flags") == purgatory.PG_ENTRY16
    assert any("real-mode entry" in n and "syslinux's memdisk" in n for n in load.notes), load.notes
    image[0x300:0x308] = b"MEMTEST "                       # any other program keeps the 32-bit entry
    assert purgatory.PARAMS.get(params_of(build(bytes(image)))[0], "flags") == purgatory.PG_ENTRY32


@pytest.mark.parametrize("change, expected", [
    (dict(machine=qemu_pc().with_changes(efi=True)), "booted through UEFI and has no BIOS"),
    (dict(crash=True, machine=qemu_crash()), "kdump (--crash) through the real-mode entry"),
])
def test_bzimage_real_mode_refusals(change, expected):
    with pytest.raises(PlacementError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        build(builders.bzimage(**IPXE_LIKE), **change)


def test_bzimage_real_mode_needs_cmd_line_ptr():
    with pytest.raises(PlacementError, match="before protocol 2.02"):
        build(builders.bzimage(**dict(IPXE_LIKE, version=0x201)), initrd=None)


def test_bzimage_old_command_line_protocol():
    # boot.rst "The old command line protocol" (before 2.02): cl_magic 0xA33F, cl_offset from the zero page.
    image = builders.bzimage(version=0x201, loadflags=0x01)
    load = build(image, initrd=None)
    params = load.segment("boot-params")
    assert (BOOT_PARAMS.get(params.buf, "cl_magic"), SETUP_HEADER.get(params.buf, "cmd_line_ptr")) == (0xA33F, 0)
    off = BOOT_PARAMS.get(params.buf, "cl_offset")
    assert off >= 0x1000 and params.buf[off:].split(b"\0")[0] == CMDLINE.encode()


def test_bzimage_load():
    image = builders.bzimage()
    load = build(image)
    assert not load.crash and load.entry == load.segment("purgatory").mem
    assert validate_linux(load.plan) == ()
    roles = [s.role for s in load.plan.segments]
    assert roles == ["purgatory", "boot-params", "kernel", "setup-data-rng", "initrd"]
    kernel, params, initrd = load.segment("kernel"), load.segment("boot-params"), load.segment("initrd")
    assert kernel.buf == image[(4 + 1) * 512:] and kernel.memsz == 0x2000000 and kernel.mem % 0x200000 == 0
    assert kernel.mem >= 0x1000000                          # max(1 MiB, pref_address)
    assert initrd.buf == INITRD
    page = read_zero_page(params.buf)
    assert page["type_of_loader"] == 0xD0
    assert page["ramdisk_image"] == initrd.mem and page["ramdisk_size"] == len(INITRD)
    assert params.buf[page["cmd_line_ptr"] - params.mem:].split(b"\0")[0] == CMDLINE.encode()
    assert page["e820_entries"] == 8 and page["e820"][1].addr == 0x1000
    rng = load.segment("setup-data-rng")
    assert page["setup_data"] == rng.mem
    assert struct.unpack_from("<QII", rng.buf) == (0, SETUP_RNG_SEED, 32) and rng.buf[16:] == bytes(range(32))
    block, _ = params_of(load)
    assert purgatory.PARAMS.get(block, "rsi") == params.mem
    assert purgatory.PARAMS.get(block, "rip") == kernel.mem + 0x200
    assert purgatory.PARAMS.get(block, "flags") == 0
    check_digests(load)


def test_no_checks_and_verbose_and_reset():
    load = build(builders.bzimage(), checks=False, verbose=True, on_failure="reset", serial_port=0x2F8)
    block, regions = params_of(load)
    assert regions == []
    assert purgatory.PARAMS.get(block, "flags") == (purgatory.PG_SKIP_CHECKS | purgatory.PG_VERBOSE
                                                    | purgatory.PG_RESET_ON_FAILURE)
    assert purgatory.PARAMS.get(block, "serial_port") == 0x2F8


def test_corrupted_copy_keeps_the_digests():
    load = build(builders.bzimage())
    bad = corrupted(load, "initrd", 10)
    assert bad.segment("initrd").buf[10] == load.segment("initrd").buf[10] ^ 0xFF
    assert bad.segment("purgatory") == load.segment("purgatory")
    with pytest.raises(KeyError):
        corrupted(load, "purgatory")


def test_without_initrd():
    load = build(builders.bzimage(), initrd=None)
    page = read_zero_page(load.segment("boot-params").buf)
    assert page["ramdisk_image"] == 0 and page["ramdisk_size"] == 0
    assert "initrd" not in [s.role for s in load.plan.segments]


def test_command_line_longer_than_the_kernel_takes():
    with pytest.raises(PlacementError, match="cmdline_size"):
        build(builders.bzimage(cmdline_size=20))


def test_efi_is_passed_when_the_image_and_the_system_can(tmp_path):
    machine = qemu_pc().with_changes(efi=True, efi_runtime_map_entries=2, efi_memdesc_size=48)
    fw = read_firmware(efi_tree(tmp_path))
    load = build(builders.bzimage(xloadflags=0x7F), machine=machine, firmware=fw)
    page_raw = load.segment("boot-params").buf
    memmap, setup_efi = load.segment("efi-memmap"), load.segment("setup-data-efi")
    assert BOOT_PARAMS.get(page_raw, "efi_memmap") == memmap.mem and len(memmap.buf) == 96
    assert BOOT_PARAMS.get(page_raw, "efi_memmap_size") == 96
    assert BOOT_PARAMS.get(page_raw, "acpi_rsdp_addr") == 0x7FBFE014
    nxt, kind, length = struct.unpack_from("<QII", setup_efi.buf)
    assert kind == SETUP_EFI and length == 96 and nxt == load.segment("setup-data-rng").mem
    assert SETUP_HEADER.get(page_raw, "setup_data") == setup_efi.mem
    no_flag = build(builders.bzimage(xloadflags=0x0F), machine=machine, firmware=fw)
    assert BOOT_PARAMS.get(no_flag.segment("boot-params").buf, "efi_memmap_size") == 0
    assert any("XLF_EFI_KEXEC" in n for n in no_flag.notes)


def page_total(machine) -> int:
    from pykexec.boot.e820 import from_machine
    return len(from_machine(machine))


def test_more_than_128_ranges_use_setup_e820_ext():
    machine = many_ranges(200)
    load = build(builders.bzimage(), machine=machine)
    page = read_zero_page(load.segment("boot-params").buf)
    assert page["e820_entries"] == 128
    ext = load.segment("setup-data-e820")
    nxt, kind, length = struct.unpack_from("<QII", ext.buf)
    assert page["setup_data"] == ext.mem and kind == SETUP_E820_EXT
    assert length == 20 * (page_total(machine) - 128) and nxt == load.segment("setup-data-rng").mem
    assert validate_linux(load.plan) == ()


def test_crash_backup_is_sized_as_kexec_tools_sizes_it_in_plan_and_build():
    """crashdump-x86.c load_crashdump_segments: a zeroed buffer of _ALIGN(backup_src_size, 1024)
    bytes, as bufsz and memsz, and add_buffer rounds memsz up to a page.  The RAM below 640 KiB
    is [0x1000, 0x9fc00): 0x9ec00 bytes in 0x9f000.  The planner and the builder agree."""
    machine = qemu_crash()
    image = prepare(builders.bzimage())
    built = build(builders.bzimage(), machine=machine, crash=True, crash_sources=elfcore.synthetic_sources(2))
    planned = plan(image, machine=machine, target="linux-user", crash=True, initrd=INITRD, cmdline=CMDLINE)
    for segments in (built.plan.segments, planned.segments):
        backup = next(s for s in segments if s.role == "backup")
        assert (backup.bufsz, backup.memsz) == (0x9EC00, 0x9F000)
        assert backup.buffer == bytes(0x9EC00)


def test_crash_load():
    machine = qemu_crash()
    load = build(builders.bzimage(), machine=machine, crash=True, crash_sources=elfcore.synthetic_sources(2))
    assert load.crash
    assert validate_linux(load.plan) == ()
    assert all(s.mem in machine.crashk_res and s.mem + s.memsz <= machine.crashk_res.end for s in load.segments)
    roles = [s.role for s in load.plan.segments]
    assert roles[:2] == ["backup", "elfcorehdr"]
    backup, elf = load.segment("backup"), load.segment("elfcorehdr")
    assert load.cmdline == f"{CMDLINE} elfcorehdr={elf.mem >> 10}K"
    ehdr, phdrs = elfcore.parse(elf.buf)
    low = next(p for p in phdrs if p["p_type"] == 1 and p["p_paddr"] == 0x1000)
    assert low["p_offset"] == backup.mem and low["p_memsz"] == 0x9EC00
    assert elf.memsz >= 16 * 1024
    block, _ = params_of(load)
    assert (purgatory.PARAMS.get(block, "backup_src"), purgatory.PARAMS.get(block, "backup_dst"),
            purgatory.PARAMS.get(block, "backup_size")) == (0x1000, backup.mem, 0x9EC00)
    page = read_zero_page(load.segment("boot-params").buf)
    ram = [e for e in page["e820"] if e.type == 1]
    assert ram[0].addr == 0x1000 and all(e.addr >= machine.crashk_res.start for e in ram[1:])
    assert not any(e.type == 1 and Range(e.addr, e.size).overlaps(Range(elf.mem, elf.memsz)) for e in ram)
    check_digests(load)


def test_crash_load_with_memmap_on_the_command_line():
    load = build(builders.bzimage(), machine=qemu_crash(), crash=True, pass_memmap_cmdline=True,
                 crash_sources=elfcore.synthetic_sources(1))
    assert " memmap=exactmap memmap=4K$0K memmap=635K@4K " in load.cmdline


def test_crash_without_a_crash_region():
    with pytest.raises(PlacementError, match="crash region"):
        build(builders.bzimage(), crash=True, crash_sources=elfcore.synthetic_sources(1))


def test_lockdown_is_refused_by_the_validator():
    with pytest.raises(UserLoadRefused, match="lockdown") as e:
        build(builders.bzimage(), machine=qemu_pc().with_changes(lockdown="integrity"))
    assert isinstance(e.value, LoadRefused) and e.value.violations[0].errno == "EPERM"


def test_modules_are_for_multiboot():
    with pytest.raises(UsageError, match="Multiboot"):
        build(builders.bzimage(), modules=[Module(b"x", "x")])


# -- vmlinux ELF ------------------------------------------------------------------------------------

def vmlinux() -> bytes:
    extra = (builders.Phdr(1, 0, 0xFFFFFFFF82000000, 0x2000000, 0, 0x300000, 6, 0x200000),)
    return builders.elf64(vaddr=0xFFFFFFFF81000000, entry=0x1000000, extra_phdrs=extra,
                          load=b"\x90" * 0x100, bss=0x1000)


def _phys(data: bytes) -> bytes:
    """The builder links vaddr == paddr; a vmlinux has paddr = LOAD_PHYSICAL_ADDR."""
    out = bytearray(data)
    struct.pack_into("<Q", out, 64 + 24, 0x1000000)      # first PT_LOAD's p_paddr
    return bytes(out)


def test_vmlinux_load():
    load = build(_phys(vmlinux()))
    assert validate_linux(load.plan) == ()
    roles = [s.role for s in load.plan.segments]
    assert roles[:2] == ["kernel", "kernel-1"]
    kernel = load.segment("kernel")
    assert kernel.mem == 0x1000000 and kernel.buf.startswith(b"\x90" * 0x100)
    assert load.segment("kernel-1").mem == 0x2000000 and load.segment("kernel-1").memsz == 0x300000
    block, _ = params_of(load)
    assert purgatory.PARAMS.get(block, "rip") == 0x1000000
    params = load.segment("boot-params")
    assert purgatory.PARAMS.get(block, "rsi") == params.mem
    page = read_zero_page(params.buf)
    assert page["version"] == 0x020F and page["ramdisk_size"] == len(INITRD)
    assert params.buf[page["cmd_line_ptr"] - params.mem:].split(b"\0")[0] == CMDLINE.encode()
    check_digests(load)


def test_vmlinux_crash_load_moves_it_into_the_crash_region():
    machine = qemu_crash()
    load = build(_phys(vmlinux()), machine=machine, crash=True, crash_sources=elfcore.synthetic_sources(1))
    kernel = load.segment("kernel")
    delta = kernel.mem - 0x1000000
    assert delta % 0x200000 == 0 and kernel.mem in machine.crashk_res
    block, _ = params_of(load)
    assert purgatory.PARAMS.get(block, "rip") == 0x1000000 + delta
    assert validate_linux(load.plan) == ()


def test_vmlinux_outside_ram_is_refused():
    data = bytearray(_phys(vmlinux()))
    struct.pack_into("<Q", data, 64 + 24, 0xFEC00000)     # the IOAPIC
    with pytest.raises(PlacementError, match="not inside System RAM"):
        build(bytes(data))


def test_a_32_bit_elf_without_multiboot_is_not_linux():
    with pytest.raises(NotLoadable):
        build(builders.elf32())


# -- Multiboot --------------------------------------------------------------------------------------

MODULES = (Module(b"K" * 5000, "dom0 console=hvc0", "dom0"), Module(b"I" * 3000, "initrd.img", "initrd.img"))


def test_xen_by_multiboot2():
    load = build(xen_elf(), initrd=None, cmdline="console=com1", modules=MODULES, image_name="xen.gz")
    assert load.protocol == "multiboot2" and validate_linux(load.plan) == ()
    kernel, mbi = load.segment("kernel"), load.segment("mbi")
    assert kernel.mem % 0x200000 == 0 and kernel.mem >= 0x200000     # relocated, 2 MiB aligned, high
    assert kernel.mem + kernel.memsz <= 1 << 32 and kernel.mem > 0x200000
    block, _ = params_of(load)
    assert purgatory.PARAMS.get(block, "flags") & purgatory.PG_ENTRY32
    assert purgatory.PARAMS.get(block, "rax") == 0x36D76289
    assert purgatory.PARAMS.get(block, "rbx") == mbi.mem
    assert purgatory.PARAMS.get(block, "rip") == kernel.mem          # entry moved with the image
    tags = dict((k, v) for k, v in parse_multiboot2_info(mbi.buf) if k != 3)
    assert tags[1] == b"xen.gz console=com1\0" and tags[2] == b"kexec\0"
    assert struct.unpack("<I", tags[21]) == (kernel.mem,)
    mods = [v for k, v in parse_multiboot2_info(mbi.buf) if k == 3]
    for m, payload in zip(MODULES, mods):
        start, end = struct.unpack_from("<II", payload)
        seg = next(s for s in load.segments if s.mem == start)
        assert seg.buf == m.data and end == start + len(m.data) and start % 4096 == 0
        assert payload[8:] == m.string.encode() + b"\0"
    for seg in load.segments:                                       # seed 004: nothing in the low 1 MiB
        assert seg.mem >= 1 << 20 and seg.mem + seg.memsz <= 1 << 32
    check_digests(load)


def test_xen_by_multiboot1():
    load = build(xen_elf(), initrd=None, cmdline="console=com1", modules=MODULES, protocol="multiboot",
                 image_name="xen.gz")
    assert load.protocol == "multiboot"
    kernel, mbi = load.segment("kernel"), load.segment("mbi")
    assert kernel.mem == 0x200000                                   # Multiboot 1 has no relocation
    block, _ = params_of(load)
    assert purgatory.PARAMS.get(block, "rax") == 0x2BADB002 and purgatory.PARAMS.get(block, "rbx") == mbi.mem
    flags, _, _, _, cmdline, count, mods_addr = struct.unpack_from("<7I", mbi.buf)
    assert count == 2 and mbi.buf[cmdline - mbi.mem:].split(b"\0")[0] == b"xen.gz console=com1"


def test_non_relocatable_multiboot2_stays_at_its_link_address():
    load = build(xen_elf(relocatable=False), initrd=None, cmdline=None)
    assert load.segment("kernel").mem == 0x200000
    assert 21 not in [k for k, _ in parse_multiboot2_info(load.segment("mbi").buf)]


def test_multiboot_image_in_the_low_megabyte_is_refused():
    data = builders.multiboot_image(0x00010003, load_addr=0x8000)
    with pytest.raises(PlacementError, match="low 1 MiB"):
        build(data, initrd=None)


def test_multiboot_refuses_crash_and_initrd():
    with pytest.raises(UsageError, match="kdump"):
        build(xen_elf(), initrd=None, crash=True, machine=qemu_crash())
    with pytest.raises(UsageError, match="module"):
        build(xen_elf())


def test_unknown_protocol():
    with pytest.raises(UsageError, match="protocol"):
        build(builders.bzimage(), protocol="pxe")


def _rsdp(revision: int) -> bytes:
    raw = bytearray(b"RSD PTR " + bytes(12) + struct.pack("<IQ", 36, 0x7FFE0000) + bytes(4))
    raw[8] = 0
    raw[15] = revision
    raw[8] = -sum(raw[:20]) & 0xFF
    raw[32] = -sum(raw[:36]) & 0xFF
    return bytes(raw)


def test_parse_rsdp():
    assert usermode.parse_rsdp(_rsdp(0)) == (_rsdp(0)[:20], None)
    assert usermode.parse_rsdp(_rsdp(2)) == (None, _rsdp(2))
    bad = bytearray(_rsdp(0))
    bad[9] ^= 1
    assert usermode.parse_rsdp(bytes(bad)) == (None, None)
    assert usermode.parse_rsdp(b"garbage" * 6) == (None, None)


def test_multiboot2_passes_the_rsdp_read_from_dev_mem(tmp_path):
    mem = bytearray(0x100000)
    mem[0xF59D0:0xF59D0 + 36] = _rsdp(0)
    (tmp_path / "mem").write_bytes(bytes(mem))
    load = build(xen_elf(), initrd=None, cmdline=None, firmware=Firmware(acpi_rsdp=0xF59D0),
                 dev_mem=tmp_path / "mem")
    assert (14, _rsdp(0)[:20]) in parse_multiboot2_info(load.segment("mbi").buf)
