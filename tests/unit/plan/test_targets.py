"""linux-user (kexec_load), Xen (null segments, CRASH_EFI), arm64, and the default target."""

from __future__ import annotations

import pytest

from pykexec.errors import PlacementError, UsageError
from pykexec.machine import Range
from pykexec.plan import default_target, plan
from pykexec.plan.xen import null_segments_below_1mib
from pykexec.plan.kexec_buf import Segment

from .conftest import GiB, MiB, arm64, debian61_bzimage, simple_machine

INITRD = bytes(5 * MiB)


def test_linux_user_layout(bz, pc_1g):
    p = plan(bz, machine=pc_1g, target="linux-user", initrd=INITRD, cmdline="root=/dev/vda")
    roles = [s.role for s in p.segments]
    assert roles == ["purgatory", "boot-params", "kernel", "setup-data-rng", "initrd"]
    pur, setup, kernel, rng, initrd = p.segments
    assert pur.mem == 0x3000 and setup.mem >= 0x3000 and setup.bufsz == 20480 + len("root=/dev/vda") + 1
    assert kernel.mem == 0x1000000  # lowest >= max(1 MiB, pref_address), 2 MiB aligned
    assert rng.mem == 0x3FFDF000 and initrd.end == rng.mem  # both highest: the rng page, then the initrd
    assert p.validate() == ()


def test_linux_user_initrd_below_initrd_addr_max_without_above_4g():
    m = simple_machine(Range(MiB, 4 * GiB - MiB))
    bz = debian61_bzimage(initrd_addr_max=0x37FFFFFF)
    p = plan(bz, machine=m, target="linux-user", initrd=INITRD)
    assert p.segments[-1].end <= 4 * GiB


def test_linux_user_crash_appends_elfcorehdr_in_kib(bz, q35_crash):
    p = plan(bz, machine=q35_crash, target="linux-user", crash=True, cmdline="console=ttyS0")
    assert [s.role for s in p.segments][:2] == ["backup", "elfcorehdr"]
    elf = p.segments[1]
    assert p.cmdline == f"console=ttyS0 elfcorehdr={elf.mem >> 10}K" and elf.memsz == 16 * 1024
    assert all(s.range in q35_crash.crashk_res for s in p.segments)
    assert p.validate() == ()


def test_linux_user_efi_setup_data_segments(bz, pc_1g):
    m = pc_1g.with_changes(efi=True, efi_runtime_map_entries=8)
    roles = [s.role for s in plan(bz, machine=m, target="linux-user").segments]
    assert roles == ["purgatory", "boot-params", "kernel", "efi-memmap", "setup-data-efi", "setup-data-rng"]


def test_null_segments_fill_the_low_mib():
    segs = [Segment("a", 0x3000, 0x5000, 1), Segment("b", 0x9000, 0x1000, 1), Segment("k", 0x1000000, 0x1000, 1)]
    out = null_segments_below_1mib(segs)
    assert [(s.role, s.mem, s.memsz) for s in out] == [
        ("identity-map", 0, 0x3000), ("a", 0x3000, 0x5000), ("identity-map", 0x8000, 0x1000),
        ("b", 0x9000, 0x1000), ("identity-map", 0xA000, 0x100000 - 0xA000), ("k", 0x1000000, 0x1000)]
    assert all(s.null for s in out if s.role == "identity-map")


def test_xen_default_and_crash(bz, pc_1g):
    m = pc_1g.with_changes(hypervisor="xen", xen_crash_area=Range(0x20000000, 0x10000000))
    p = plan(bz, machine=m, cmdline="console=hvc0")
    assert p.target == "xen" and p.kexec_type == "KEXEC_TYPE_DEFAULT"
    assert sum(s.memsz for s in p.segments if s.mem < MiB) == MiB
    assert p.validate() == ()
    c = plan(bz, machine=m, crash=True, cmdline="console=hvc0")
    assert c.kexec_type == "KEXEC_TYPE_CRASH" and c.validate() == ()
    assert all(s.range in m.xen_crash_area for s in c.segments if not s.null)
    with pytest.raises(PlacementError, match="Xen crash area is unknown"):
        plan(bz, machine=m.with_changes(xen_crash_area=None), crash=True)


EFI_AREA = Range(0x20000000, 0x10000000)


@pytest.mark.parametrize("target, params_at", [
    # XenServer: Xen's purgatory takes the crash area's first 16 KiB, boot_params follows
    ("xen-efi", 0x20004000),
    ("xen-efi-v2", 0x20000000),
])
def test_xen_efi_crash(pc_1g, target, params_at):
    bz = debian61_bzimage(setup_sects=30)  # kern16 = 31 * 512 = 0x3e00, not a page multiple
    m = pc_1g.with_changes(xen_crash_area=EFI_AREA)
    p = plan(bz, machine=m, target=target, crash=True, initrd=INITRD, cmdline="console=hvc0")
    kernel = p.segments[0]
    # the lowest 2 MiB boundary K in the area with room below it for the setup code: 0x20200000
    assert kernel.role == "kernel" and kernel.bufsz == len(bz.data)
    assert (kernel.mem, kernel.offset) == (0x201fc000, 0x200) and p.entry == 0x20200200
    assert p.entry_arg == params_at and p.kexec_type == "KEXEC_TYPE_CRASH_EFI"
    assert [s.role for s in p.segments if not s.null] == ["kernel", "boot-params", "initrd", "elfcorehdr"]
    assert [(s.mem, s.memsz) for s in p.segments if s.null] == [(0, MiB)] and p.segments[-1].null
    assert "elfcorehdr=" in p.cmdline and p.validate() == ()
    assert ("XenServer" if target == "xen-efi" else "v2 series") in p.notes[0]
    with pytest.raises(PlacementError, match="multiple of 2 MiB"):
        plan(debian61_bzimage(kernel_alignment=0x100000), machine=m, target=target, crash=True)
    with pytest.raises(PlacementError, match="2.02 or later"):
        plan(debian61_bzimage(version=0x201), machine=m, target=target, crash=True)


def test_xen_efi_default_is_xenservers_alone(pc_1g):
    bz = debian61_bzimage(setup_sects=30)
    m = pc_1g.with_changes(xen_crash_area=EFI_AREA)
    p = plan(bz, machine=m, target="xen-efi", initrd=INITRD, cmdline="console=hvc0")
    kernel = p.segments[0]
    # the lowest K >= 16 MiB + 2 MiB (a whole alignment below it for the setup code)
    assert (kernel.mem + kernel.offset, p.entry) == (0x1200000 - 0x3e00, 0x1200200)
    assert p.kexec_type == "KEXEC_TYPE_DEFAULT_EFI" and p.validate() == ()
    assert any("purgatory" in n and "at 0x20000000" in n for n in p.notes)   # in the crash area, for a default load too
    with pytest.raises(UsageError, match="--crash"):
        plan(bz, machine=m, target="xen-efi-v2")
    with pytest.raises(PlacementError, match="no(ne)? reserved"):
        plan(bz, machine=m.with_changes(xen_crash_area=None), target="xen-efi")


def test_every_user_mode_elfcorehdr_is_sized_alike(bz, q35_crash):
    """linux-user and xen-efi both carry the header a kexec_load loader builds: 64 + 56 per
    program header (a note per CPU, vmcoreinfo, kernel text, the RAM ranges), in at least 16 KiB."""
    m = q35_crash.with_changes(xen_crash_area=q35_crash.crashk_res)
    # RAM [0x1000, 0x9fc00) and [1 MiB, 0x3ffdf000) less the crash region [0x2f000000, 0x3f000000): 3 ranges
    want = (64 + 56 * (2 + 1 + 1 + 3), 16 * 1024)
    for target, image in (("linux-user", bz), ("xen-efi", debian61_bzimage())):
        elf = next(s for s in plan(image, machine=m, target=target, crash=True).segments if s.role == "elfcorehdr")
        assert (elf.bufsz, elf.memsz) == want, target


def test_arm64_layout():
    m = simple_machine(Range(0x40000000, 2 * GiB), arch="arm64", fdt_size=0x3000)
    img = arm64(image_size=0x2400000)
    p = plan(img, machine=m, initrd=INITRD, cmdline="console=ttyAMA0")
    kernel, initrd, dtb = p.segments
    assert kernel.mem == 0x40000000 and p.entry == kernel.mem and kernel.memsz == 0x2400000
    assert initrd.mem == kernel.end and dtb.mem % (2 * MiB) == 0 and dtb.end <= 0xC0000000
    assert dtb.mem == 0xC0000000 - 2 * MiB
    assert p.validate() == ()


def test_arm64_notes_speak_no_x86(bz):
    """An unknown kernel version gets a note on both; only x86's names the x86 field."""
    notes = plan(arm64(), machine=simple_machine(Range(0x40000000, GiB), arch="arm64", release=None)).notes
    assert any("version is unknown" in n for n in notes)
    assert not any("pref_address" in n for n in notes)
    x86 = plan(bz, machine=simple_machine(Range(0x100000, GiB), release=None), target="linux-file").notes
    assert any("pref_address" in n for n in x86)


def test_arm64_text_offset_moves_the_kernel_up():
    m = simple_machine(Range(0x40000000, GiB), arch="arm64")
    p = plan(arm64(image_size=0x1000000, text_offset=0x80000), machine=m)
    assert p.segments[0].mem == 0x40080000 and p.segments[0].memsz == 0x1000000


def test_arm64_retries_the_kernel_above_when_the_rest_does_not_fit():
    # The first hole fits only the kernel, and from there the initrd may not go past
    # round_down(kernel, 1 GiB) + 32 GiB; the kernel is retried above, in the far hole.
    m = simple_machine(Range(GiB, 32 * MiB), Range(40 * GiB, GiB), arch="arm64")
    p = plan(arm64(image_size=32 * MiB), machine=m, initrd=bytes(100 * MiB))
    kernel, initrd, dtb = p.segments
    assert kernel.mem == 40 * GiB and initrd.mem == kernel.end and dtb.end <= 41 * GiB
    assert p.validate() == ()


def test_arm64_crash_and_refusals():
    m = simple_machine(Range(0x40000000, 2 * GiB), arch="arm64", crashk_res=Range(0x80000000, 0x10000000))
    p = plan(arm64(), machine=m, crash=True)
    assert [s.role for s in p.segments] == ["kernel", "elfcorehdr", "dtb"]
    assert p.segments[1].mem % 0x10000 == 0 and p.validate() == ()
    with pytest.raises(PlacementError, match="image_size is 0"):
        plan(arm64(image_size=0), machine=m)
    with pytest.raises(PlacementError, match="big-endian"):
        plan(arm64(flags=0x0B), machine=m)


def test_default_target(bz):
    x86 = simple_machine(Range(MiB, GiB))
    assert default_target(bz, x86) == "linux-file"
    assert default_target(debian61_bzimage(version=0x20B), x86) == "linux-user"
    assert default_target(bz, x86.with_changes(hypervisor="xen")) == "xen"
    assert default_target(arm64(), simple_machine(Range(MiB, GiB), arch="arm64")) == "linux-file"
    with pytest.raises(PlacementError, match=r"is for x86_64, but this machine is arm64"):
        plan(bz, machine=simple_machine(Range(MiB, GiB), arch="arm64"))
