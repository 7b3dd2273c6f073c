"""The kdump ELF core header: contents, kexec-tools' layout, no cap, and the sysfs it reads."""

from __future__ import annotations

import struct
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pykexec.boot import elfcore
from pykexec.boot.elfcore import PT_LOAD, PT_NOTE, Backup, CrashSources, KernelText, Note
from pykexec.machine import Range, TypedRange
from pykexec.machine.model import Machine

from .conftest import MiB, many_ranges, qemu_crash


def test_header_layout_pinned():
    assert elfcore.EHDR.size == 64 and elfcore.PHDR.size == 56 and elfcore.SHDR.size == 64
    raw = elfcore.build([Range(MiB, MiB)], sources=CrashSources())
    assert raw[:16] == b"\x7fELF\x02\x01\x01" + bytes(9)
    assert struct.unpack_from("<HHI", raw, 16) == (4, 62, 1)        # ET_CORE, EM_X86_64, EV_CURRENT
    assert struct.unpack_from("<QQQ", raw, 24) == (0, 64, 0)        # e_entry, e_phoff, e_shoff
    assert struct.unpack_from("<HHHHHH", raw, 52) == (64, 56, 1, 0, 0, 0)
    assert len(raw) == 64 + 56


def test_size_rule_is_what_build_writes():
    """64-byte Elf64_Ehdr plus 56 per Elf64_Phdr (System V ABI); the section header only past 65534."""
    sources = CrashSources(cpu_notes=(Note(0x7F000000, 0x2D0), Note(0x7F001000, 0x2D0)),
                           vmcoreinfo=Note(0x3A000000, 0x1000), kernel_text=KernelText(0xFFFFFFFF81000000, MiB, MiB))
    ranges = [Range(MiB * i, 0x1000) for i in range(1, 6)]
    count = elfcore.phnum(cpus=2, nr_ranges=5)
    assert count == 2 + 1 + 1 + 5
    assert elfcore.header_size(count) == 64 + 56 * 9 == len(elfcore.build(ranges, sources=sources))
    assert elfcore.header_size(0xFFFF) == 64 + 56 * 0xFFFF + 64


def test_user_memsz_is_at_least_16k_then_whole_pages():
    """kexec-tools load_crashdump_segments: memsz 16 KiB for a smaller header; add_buffer rounds to a page."""
    assert elfcore.user_memsz(120, 4096) == 16 * 1024
    assert elfcore.user_memsz(16 * 1024 + 1, 4096) == 20 * 1024
    assert elfcore.user_memsz(120, 64 * 1024) == 64 * 1024


def test_notes_then_vmcoreinfo_then_text_then_ram():
    sources = CrashSources(cpu_notes=(Note(0x7F000000, 0x2D0, "cpu0"), Note(0x7F001000, 0x2D0, "cpu1")),
                           vmcoreinfo=Note(0x3A000000, 0x1000),
                           kernel_text=KernelText(0xFFFFFFFF81000000, 0x1000000, 0x2800000),
                           page_offset=0xFFFF888000000000)
    ehdr, phdrs = elfcore.parse(elfcore.build([Range(0x1000, 0x9F000), Range(MiB, 0x3000000)], sources=sources))
    assert ehdr["e_phnum"] == 6
    assert [p["p_type"] for p in phdrs] == [PT_NOTE, PT_NOTE, PT_NOTE, PT_LOAD, PT_LOAD, PT_LOAD]
    assert phdrs[0] == {"p_type": PT_NOTE, "p_flags": 0, "p_offset": 0x7F000000, "p_vaddr": 0,
                        "p_paddr": 0x7F000000, "p_filesz": 0x2D0, "p_memsz": 0x2D0, "p_align": 0}
    assert phdrs[2]["p_offset"] == 0x3A000000 and phdrs[2]["p_filesz"] == 0x1000
    assert phdrs[3]["p_vaddr"] == 0xFFFFFFFF81000000 and phdrs[3]["p_paddr"] == 0x1000000
    ram = phdrs[5]
    assert ram == {"p_type": PT_LOAD, "p_flags": 7, "p_offset": MiB, "p_vaddr": 0xFFFF888000000000 + MiB,
                   "p_paddr": MiB, "p_filesz": 0x3000000, "p_memsz": 0x3000000, "p_align": 0}


def test_backup_range_points_at_the_copy():
    backup = Backup(Range(0x1000, 0x9EC00), 0x2F000000)
    _, phdrs = elfcore.parse(elfcore.build([Range(0, 0xA0000), Range(MiB, MiB)], sources=CrashSources(),
                                           backup=backup))
    loads = [(p["p_paddr"], p["p_filesz"], p["p_offset"]) for p in phdrs]
    assert loads == [(0, 0x1000, 0), (0x1000, 0x9EC00, 0x2F000000), (0x9FC00, 0x400, 0x9FC00), (MiB, MiB, MiB)]


def test_crash_ranges_exclude_the_crash_region_and_keep_acpi():
    m = qemu_crash()
    ranges = elfcore.crash_ranges(m)
    assert not any(r.overlaps(m.crashk_res) for r in ranges)
    ram = sum(r.size for r in m.system_ram())
    acpi = sum(r.size for r in m.memory if r.type in elfcore.CRASH_DUMP_TYPES)
    assert sum(r.size for r in ranges) == ram + acpi - m.crashk_res.size


def test_gart_and_low_crash_region_are_excluded():
    m = Machine(memory=(TypedRange(MiB, 512 * MiB, "System RAM", 0), TypedRange(64 * MiB, 16 * MiB, "GART", 1),
                        TypedRange(256 * MiB, 32 * MiB, "Crash kernel", 1)),
                crashk_res=Range(256 * MiB, 32 * MiB), crashk_low_res=Range(200 * MiB, 8 * MiB))
    assert elfcore.crash_ranges(m) == [Range.span(MiB, 64 * MiB), Range.span(80 * MiB, 200 * MiB),
                                       Range.span(208 * MiB, 256 * MiB), Range.span(288 * MiB, 513 * MiB)]


def test_no_cap_on_ranges_or_cpus():
    m = many_ranges(4096, crash=Range(0x200000000, 256 * MiB))
    sources = elfcore.synthetic_sources(3000)
    ehdr, phdrs = elfcore.parse(elfcore.build(elfcore.crash_ranges(m), sources=sources))
    assert ehdr["e_phnum"] == 3000 + 1 + 4098          # notes, vmcoreinfo, low RAM + 4096 + the last GiB


def test_extended_numbering_past_65534_headers():
    ranges = [Range(i * 0x2000, 0x1000) for i in range(70000)]
    raw = elfcore.build(ranges, sources=CrashSources())
    ehdr, phdrs = elfcore.parse(raw)
    assert ehdr["e_phnum"] == elfcore.PN_XNUM and ehdr["e_shnum"] == 1 and ehdr["e_shentsize"] == 64
    assert ehdr["e_shoff"] == 64 + 56 * 70000
    assert len(phdrs) == 70000 and phdrs[-1]["p_paddr"] == 69999 * 0x2000
    shdr = elfcore.SHDR.unpack_from(raw, ehdr["e_shoff"])
    assert shdr[7] == 70000 and shdr[5] == 1            # sh_info = phnum, sh_size = shnum


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4096), st.integers(1, 64)), max_size=40),
       st.integers(0, 8), st.booleans())
def test_every_byte_of_every_range_is_described_once(raw, cpus, with_backup):
    ranges = []
    cursor = 0
    for gap, size in raw:
        start = cursor + gap * 0x1000
        ranges.append(Range(start, size * 0x1000))
        cursor = start + size * 0x1000 + 0x1000
    backup = Backup(Range(0x1000, 0x9EC00), 0x7000_0000) if with_backup else None
    _, phdrs = elfcore.parse(elfcore.build(ranges, sources=elfcore.synthetic_sources(cpus), backup=backup))
    loads = [Range(p["p_paddr"], p["p_memsz"]) for p in phdrs if p["p_type"] == PT_LOAD]
    assert sum(r.size for r in loads) == sum(r.size for r in ranges)
    assert sorted(loads) == loads and all(a.end <= b.start for a, b in zip(loads, loads[1:]))
    for p in phdrs:
        if p["p_type"] == PT_LOAD and backup and Range(p["p_paddr"], p["p_memsz"]) in backup.source:
            assert p["p_offset"] == backup.dest + p["p_paddr"] - 0x1000
        elif p["p_type"] == PT_LOAD:
            assert p["p_offset"] == p["p_paddr"]
    assert sum(p["p_type"] == PT_NOTE for p in phdrs) == cpus + 1


# -- reading what the running kernel publishes ------------------------------------------------------

def crash_tree(sysfs: Path, cpus: int, *, sizes: bool = True) -> None:
    for i in range(cpus):
        d = sysfs / f"devices/system/cpu/cpu{i}"
        d.mkdir(parents=True)
        (d / "crash_notes").write_text(f"{0x7F000000 + i * 0x1000:x}\n")
        if sizes:
            (d / "crash_notes_size").write_text("720\n")
    (sysfs / "devices/system/cpu/cpufreq").mkdir(parents=True)
    (sysfs / "kernel").mkdir(parents=True)
    (sysfs / "kernel/vmcoreinfo").write_text("3a1f5000 1000\n")


def kcore(path: Path, loads: list[tuple[int, int, int]]) -> None:
    phdrs = [elfcore.PHDR.pack(PT_NOTE, 0, 0x1000, 0, 0, 0x100, 0, 4)]
    phdrs += [elfcore.PHDR.pack(PT_LOAD, 7, 0x2000, v, p, s, s, 0x1000) for v, p, s in loads]
    head = elfcore.EHDR.pack(elfcore.ELF_IDENT, 4, 62, 1, 0, 64, 0, 0, 64, 56, len(phdrs), 0, 0, 0)
    path.write_bytes(head + b"".join(phdrs))


def test_read_sources(tmp_path):
    crash_tree(tmp_path / "sys", 10)
    (tmp_path / "proc").mkdir()
    kcore(tmp_path / "proc/kcore", [(0xFFFFFFFFA3000000, (1 << 64) - 1, 0x2E00000),
                                    (0xFFFF9A0000100000, 0x100000, 0x3FEE0000)])
    src = elfcore.read_sources(sys=tmp_path / "sys", proc=tmp_path / "proc")
    assert [n.name for n in src.cpu_notes] == [f"cpu{i}" for i in range(10)]    # numeric order, cpu10 after cpu9
    assert src.cpu_notes[9] == Note(0x7F009000, 720, "cpu9")
    assert src.vmcoreinfo == Note(0x3A1F5000, 0x1000, "vmcoreinfo")
    assert src.page_offset == 0xFFFF9A0000000000
    assert src.kernel_text is None          # no physical address: no "Kernel code", kcore's p_paddr is -1


def test_kernel_text_from_kcore_and_iomem(tmp_path):
    kcore(tmp_path / "kcore", [(0xFFFFFFFFA3000000, 0x2EA00000, 0x2E00000)])
    m = Machine(memory=(TypedRange(MiB, 1 << 30, "System RAM", 0), TypedRange(0x2EA00000, 0xE01EF2, "Kernel code", 1)))
    text, _ = elfcore.read_kcore(tmp_path / "kcore", [], m)
    assert text == KernelText(0xFFFFFFFFA3000000, 0x2EA00000, 0x2E00000)


def test_missing_crash_notes_size_defaults_to_1024(tmp_path):
    crash_tree(tmp_path, 1, sizes=False)
    src = elfcore.read_sources(sys=tmp_path, proc=tmp_path / "noproc")
    assert src.cpu_notes == (Note(0x7F000000, 1024, "cpu0"),)
    assert any("kcore" in path for path, _ in src.unreadable)


def test_arm64_kcore_tells_the_text_from_a_single_ram_range(tmp_path):
    """One RAM entry (the linear map) and the kernel text: both hold "Kernel code"; the text is
    the one off the linear map, and the linear offset is the RAM entry's."""
    linear, kimage = 0xFFF0000000000000 - 0x40000000, 0xFFFF800080000000 - 0x40200000
    entries = [(1, 0x40200000 + kimage, 0x40200000, 0x2F00000),          # KCORE_TEXT
               (1, 0xFFFF800000000000, (1 << 64) - 1, 0x8000000),        # vmalloc: no paddr
               (1, 0x40000000 + linear, 0x40000000, 0x60000000)]         # KCORE_RAM
    head = elfcore.EHDR.pack(elfcore.ELF_IDENT, elfcore.ET_CORE, elfcore.EM_AARCH64, 1, 0, elfcore.EHDR.size,
                             0, 0, elfcore.EHDR.size, elfcore.PHDR.size, len(entries), 0, 0, 0)
    phdrs = b"".join(elfcore.PHDR.pack(t, 7, 0, v, p, m, m, 0) for t, v, p, m in entries)
    (tmp_path / "kcore").write_bytes(head + phdrs)
    m = Machine(arch="arm64", memory=(TypedRange(0x40000000, 0x60000000, "System RAM", 0),
                                      TypedRange(0x40210000, 0x2500000, "Kernel code", 1)))
    unreadable = []
    text, offset = elfcore.read_kcore(tmp_path / "kcore", unreadable, m, arch="arm64")
    assert offset == linear and unreadable == []
    assert (text.vaddr, text.paddr, text.size) == (0x40200000 + kimage, 0x40200000, 0x2F00000)
