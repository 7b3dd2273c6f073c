"""x86 kexec_file_load placement (arch/x86/kernel/kexec-bzimage64.c), calibrated on Debian 6.1 under QEMU.

The expected addresses are the kernel's own debug output, kept in
tests/data/machines/*.kexec-file.log.
"""

from __future__ import annotations

import re

import pytest

from pykexec.errors import PlacementError
from pykexec.machine import Range, TypedRange
from pykexec.plan import plan
from pykexec.plan.x86 import boot_params_size
from pykexec.plan.linux import KernelBehaviour

from .conftest import DATA, GiB, MiB, debian61_bzimage, simple_machine

INITRD = bytes(3000000)


def logged(name: str) -> list[tuple[int, int, int]]:
    """(mem, memsz, bufsz) of every 'Loading segment' line, in order, for the last load in the log."""
    loads, current = [], []
    for line in (DATA / name).read_text().splitlines():
        m = re.search(r"Loading segment (\d+): .*bufsz=(0x[0-9a-f]+) mem=(0x[0-9a-f]+) memsz=(0x[0-9a-f]+)", line)
        if m:
            if m.group(1) == "0" and current:
                loads.append(current)
                current = []
            current.append((int(m.group(3), 16), int(m.group(4), 16), int(m.group(2), 16)))
    loads.append(current)
    return loads


def layout(p):
    return [(s.mem, s.memsz, s.bufsz) for s in p.segments]


def test_normal_load_matches_debian_6_1(bz, pc_1g):
    p = plan(bz, machine=pc_1g, initrd=INITRD, cmdline="console=ttyS0 marker=normal")
    want = logged("qemu-pc-1g-debian6.1.kexec-file.log")[0]
    assert [(m, s) for m, s, _ in layout(p)] == [(m, s) for m, s, _ in want]
    assert [s.role for s in p.segments] == ["purgatory", "boot-params", "kernel", "initrd"]
    assert p.segments[1].bufsz == 0x10E0 and p.segments[0].bufsz == 0x4000
    assert p.entry == 0x9A000 + 0x120 and p.entry_arg == 0x98000
    assert p.validate() == ()


def test_no_initrd_matches_debian_6_1(bz, pc_1g):
    p = plan(bz, machine=pc_1g, cmdline="console=ttyS0 marker=noinitrd")
    want = logged("qemu-pc-1g-debian6.1.kexec-file.log")[1]
    assert [(m, s) for m, s, _ in layout(p)] == [(m, s) for m, s, _ in want]


def test_crash_load_matches_debian_6_1(bz, q35_crash):
    p = plan(bz, machine=q35_crash, crash=True, initrd=INITRD, cmdline="console=ttyS0 marker=crash")
    want = logged("qemu-q35-1g-crashkernel256m-debian6.1.kexec-file.log")[2]
    assert [(m, s) for m, s, _ in layout(p)] == [(m, s) for m, s, _ in want]
    assert [s.role for s in p.segments] == ["elfcorehdr", "purgatory", "boot-params", "kernel", "initrd"]
    assert p.cmdline == "elfcorehdr=0x2f000000 console=ttyS0 marker=crash"
    assert p.validate() == ()


def test_newer_kernels_walk_top_down_from_the_top_and_honour_pref_address(bz):
    m = simple_machine(Range(0x1000, 0x9F000), Range(MiB, 2 * GiB - MiB), Range(4 * GiB, 4 * GiB), release="6.8.0")
    p = plan(bz, machine=m, initrd=INITRD, cmdline="x")
    purgatory, params, kernel, initrd = p.segments
    assert purgatory.mem == 8 * GiB - 0x5000  # exact fit at the top of the highest range
    assert kernel.mem % 0x200000 == 0 and kernel.mem >= 0x1000000 and kernel.end <= 8 * GiB
    low = simple_machine(Range(MiB, 15 * MiB), Range(16 * MiB, 60 * MiB), release="6.8.0")
    with pytest.raises(PlacementError, match=r"kernel needs 51.5 MiB \(at or above 0x1000000"):
        plan(bz, machine=low.with_changes(memory=low.memory[:1] + (TypedRange(16 * MiB, 40 * MiB, "System RAM"),)))


def test_cmdline_rules(bz, pc_1g):
    with pytest.raises(PlacementError, match="at most 2047") as e:
        plan(bz, machine=pc_1g, cmdline="x" * 2047)
    assert e.value.errno == "EINVAL" and e.value.exit_code == 2
    with pytest.raises(PlacementError, match="keeps 30 .* so at most 2017 fit"):
        plan(bz, machine=pc_1g, cmdline="x" * 2017)
    plan(bz, machine=pc_1g, cmdline="x" * 2016)


def test_probe_refusals(pc_1g):
    with pytest.raises(PlacementError, match="2.12") as e:
        plan(debian61_bzimage(version=0x20B), machine=pc_1g, target="linux-file")
    assert e.value.errno == "ENOEXEC"
    with pytest.raises(PlacementError, match="XLF_CAN_BE_LOADED_ABOVE_4G"):
        plan(debian61_bzimage(xloadflags=0x1), machine=pc_1g, target="linux-file")
    with pytest.raises(PlacementError, match="5-level"):
        plan(debian61_bzimage(xloadflags=0x3), machine=pc_1g.with_changes(x86_5level=True), target="linux-file")


def test_boot_params_components(pc_1g):
    beh = KernelBehaviour.of(pc_1g)
    plain = boot_params_size(pc_1g, beh, 28)
    assert plain.total == 0x10E0 and plain.params_cmdline == 0x1040
    efi = pc_1g.with_changes(efi=True, efi_runtime_map_entries=10, efi_memdesc_size=48)
    assert boot_params_size(efi, beh, 28).total == 0x10E0 + 480
    ima = pc_1g.with_changes(kernel_config=(("CONFIG_IMA_KEXEC", "y"),))
    assert boot_params_size(ima, KernelBehaviour.of(ima), 28).ima == 32
    # kexec-bzimage64.c reserves a setup_data header + struct kho_data (fdt_addr, fdt_size,
    # scratch_addr, scratch_size: 16 + 32 bytes) in every 6.16+ kernel built with KEXEC_HANDOVER,
    # KHO on or off
    built = pc_1g.with_changes(kernel_release="7.2.13", kernel_config=(("CONFIG_KEXEC_HANDOVER", "y"),))
    assert boot_params_size(built, KernelBehaviour.of(built), 28).kho == 48
    off = built.with_changes(kernel_config=(("CONFIG_KEXEC_HANDOVER", "n"),))
    assert boot_params_size(off, KernelBehaviour.of(off), 28).kho == 0


def test_crash_before_5_5_has_a_backup_region(bz, q35_crash):
    old = q35_crash.with_changes(kernel_release="5.4.0")
    p = plan(bz, machine=old, crash=True, cmdline="c")
    assert [s.role for s in p.segments][:2] == ["backup", "elfcorehdr"]
    assert p.segments[0].memsz == 0x9F000 and p.segments[0].mem == 0x2F000000
    assert p.validate() == ()


def test_crash_needs_a_region(bz, pc_1g):
    with pytest.raises(PlacementError, match="crashkernel="):
        plan(bz, machine=pc_1g, crash=True)
    unknown = pc_1g.with_changes(memory_source="memmap", kexec_crash_size=256 * MiB)
    with pytest.raises(PlacementError, match="256 MiB crash region is reserved but its address is unknown"):
        plan(bz, machine=unknown, crash=True)


def test_crash_region_too_small_names_what_did_not_fit(bz):
    m = simple_machine(Range(MiB, GiB), release="6.1.0", crashk_res=Range(0x20000000, 48 * MiB), possible_cpus=1)
    with pytest.raises(PlacementError) as e:
        plan(bz, machine=m, crash=True, initrd=INITRD)
    msg = str(e.value)
    assert msg.startswith("kernel needs 51.5 MiB") and "the crash region has" in msg and e.value.role == "kernel"


def test_crash_hotplug_sizes_the_elfcorehdr(bz, q35_crash):
    m = q35_crash.with_changes(kernel_release="6.6.0", kernel_config=(
        ("CONFIG_CRASH_HOTPLUG", "y"), ("CONFIG_MEMORY_HOTPLUG", "y"), ("CONFIG_NR_CPUS_DEFAULT", "64"),
        ("CONFIG_CRASH_MAX_MEMORY_RANGES", "8192")))
    elf = plan(bz, machine=m, crash=True).segments[0]
    assert elf.bufsz == 0x1000 and elf.memsz == 0x1000 * ((64 + 56 * (2 + 64 + 8192) + 4095) // 0x1000)


def test_driver_managed_ram_is_skipped(bz):
    m = simple_machine(Range(MiB, 255 * MiB), release="6.12")
    m = m.with_changes(memory=m.memory + (TypedRange(4 * GiB, GiB, "System RAM (kmem)"),))
    p = plan(bz, machine=m, cmdline="x")
    assert all(s.end <= 256 * MiB for s in p.segments)


def test_kho_confines_to_scratch(bz):
    scratch = (Range(0x10000000, 0x8000000), Range(0x40000000, 0x1000000))
    m = simple_machine(Range(MiB, 4 * GiB), release="6.16", kho_active=True, kho_scratch=scratch)
    p = plan(bz, machine=m, cmdline="x", initrd=INITRD)
    assert p.segments[0].role == "kho-scratch" and p.segments[0].bufsz == 32
    assert all(any(s.range in r for r in scratch) for s in p.segments)
    with pytest.raises(PlacementError, match="scratch areas are unknown"):
        plan(bz, machine=m.with_changes(kho_scratch=()))
    crash = m.with_changes(crashk_res=Range(0x80000000, 0x10000000))
    assert all(s.range in crash.crashk_res for s in plan(bz, machine=crash, crash=True).segments)


def test_a_load_too_big_for_kho_scratch_names_the_areas(bz):
    # the guest of tests/vm/test_kho.py: kho_scratch=16M,96M,16M, the global and per-node areas adjacent
    scratch = (Range(0x53C00000, 16 * MiB), Range(0x4DC00000, 96 * MiB), Range(0x4CC00000, 16 * MiB))
    m = simple_machine(Range(MiB, 4 * GiB), release="7.2", kho_active=True, kho_scratch=scratch)
    with pytest.raises(PlacementError, match=r"initrd needs 112 MiB .* but KHO scratch \(0x53c00000-0x54bfffff, "
                                             r"0x4dc00000-0x53bfffff, 0x4cc00000-0x4dbfffff\) has .* free") as e:
        plan(bz, machine=m, cmdline="x", initrd=bytes(112 * MiB))
    largest = re.search(r"the largest piece ([\d.]+) MiB$", str(e.value))
    assert largest and float(largest.group(1)) < 112, str(e.value)


def test_adjacent_kho_scratch_areas_are_separate_holes():
    # kho_walk_scratch offers the kernel's hole finder each area alone: two adjacent 64 MiB areas
    # cannot hold 100 MiB, and the largest piece the refusal reports is 64 MiB, not 128
    from pykexec.plan.common import place
    from pykexec.plan.kexec_buf import KexecBuf, Placer, Walk
    walk = Walk("KHO scratch", (Range(0x4000000, 64 * MiB), Range(0x8000000, 64 * MiB)), "given")
    with pytest.raises(PlacementError, match=r"has 128 MiB free, the largest piece 64 MiB$"):
        place(Placer(), KexecBuf("initrd", 100 * MiB, 100 * MiB), [walk])


def test_under_kho_only_kexec_file_load_hands_over():
    from pykexec.api import receivers_for
    from pykexec.errors import LoadRefused
    m = simple_machine(Range(MiB, GiB), kho_active=True, kho_scratch=(Range(0x1000000, 0x1000000),))
    assert receivers_for("auto", m) == ("linux-file",) and receivers_for("file", m) == ("linux-file",)
    with pytest.raises(LoadRefused, match=r"--mode user: .*kho.rst"):
        receivers_for("user", m)
    assert receivers_for("user", m, crash=True) == ("linux-user",)  # a crash image never hands over
    assert receivers_for("auto", m.with_changes(kho_active=False)) == ("linux-file", "linux-user")


def test_too_little_ram_everywhere(bz):
    with pytest.raises(PlacementError, match="no memory ranges"):
        plan(bz, machine=simple_machine())
