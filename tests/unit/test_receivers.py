"""The receivers table: a new architecture is one entry, read by plan() and api.load alone.

The fake entry here serves riscv64 Images through ``linux-user`` with a
planner and a builder defined in this module; neither ``api`` nor the
backends know it, yet ``plan``, a dry run and a real (recorded) load all
reach it, and the load executes exactly the object the dry run showed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pykexec import api
from pykexec.boot import purgatory
from pykexec.boot.usermode import UserLoad
from pykexec.errors import LoadRefused, PlacementError, UsageError
from pykexec.machine import Range, TypedRange
from pykexec.machine.model import Machine, normalize_arch, runs_on
from pykexec.plan import LoadPlan, Segment, plan
from pykexec.plan.common import PurgatorySize
from pykexec.formats.prepare import prepare
from pykexec.receivers import TABLE, Entry, default_target, find
from tests import builders

from .backends.fakes import FakeSyscalls
from .plan.conftest import debian61_bzimage, qemu_machine

RISCV_RAM = Range(0x80000000, 0x40000000)
BUILDS: list[tuple] = []


def riscv_machine() -> Machine:
    return Machine(arch="riscv64", memory=(TypedRange(RISCV_RAM.start, RISCV_RAM.size, "System RAM"),),
                   memory_source="iomem", mem_total=RISCV_RAM.size)


def fake_plan(layer, data, *, machine, crash, initrd, cmdline, purgatory) -> LoadPlan:
    kernel = Segment("kernel", RISCV_RAM.start + layer.text_offset, len(data), len(data), bytes(data))
    return LoadPlan(target="linux-user", crash=crash, entry=kernel.mem, cmdline=cmdline,
                    segments=(kernel,), arch=machine.arch, machine=machine,
                    notes=(f"purgatory {purgatory.bufsz}",))


def fake_build(prepared, *, initrd, cmdline, crash, machine, modules, checks, image_name, dtb, sys_root) -> UserLoad:
    BUILDS.append((image_name, cmdline))
    p = fake_plan(prepared.kernel_layer, prepared.kernel, machine=machine, crash=crash, initrd=initrd,
                  cmdline=cmdline, purgatory=fake_purgatory())
    return UserLoad(plan=p, protocol="linux")


def fake_purgatory():
    return PurgatorySize(bufsz=123, memsz=4096, align=4096, entry_offset=0,
                                   measured_from="the fake entry")


FAKE = Entry("riscv64", frozenset({"riscv-image"}), "linux-user",
             planner=f"{__name__}:fake_plan", builder=f"{__name__}:fake_build",
             purgatory=f"{__name__}:fake_purgatory")


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    (root / "kernel" / "security").mkdir(parents=True)
    (root / "kernel" / "security" / "lockdown").write_text("[none] integrity confidentiality\n")
    return root


def test_a_new_architecture_is_one_entry(tmp_path, sysfs):
    image = tmp_path / "Image"
    image.write_bytes(builders.riscv_image())
    prepared = prepare(image.read_bytes())
    with pytest.raises(PlacementError, match="no linux-user planner for riscv-image"):
        plan(prepared, machine=riscv_machine(), target="linux-user")
    p = plan(prepared, machine=riscv_machine(), target="linux-user", table=(*TABLE, FAKE))
    assert p.notes == ("purgatory 123",) and p.segments[0].mem == 0x80200000

    BUILDS.clear()
    opts = api.LoadOptions(image=image, mode="user", command_line="console=ttySIF0 marker=1",
                           require_signature=False)
    fake = FakeSyscalls()
    kw = dict(syscalls=fake, sysfs=sysfs, machine=riscv_machine(), efivars=sysfs / "none",
              table=(*TABLE, FAKE))
    _, report, shown = api.load(opts, dry_run=True, **kw)
    assert fake.calls == [] and report is None
    _, report, loaded = api.load(opts, **kw)
    (call, entry, segments, flags), = fake.calls
    assert (call, entry, flags) == ("kexec_load", shown.entry, 0) == ("kexec_load", 0x80200000, 0)
    assert [(s.buf, s.mem, s.memsz) for s in segments] == [(builders.riscv_image(), 0x80200000,
                                                              len(builders.riscv_image()))]
    assert loaded.segments == shown.segments and report.syscall == "kexec_load"
    assert BUILDS == [("Image", "console=ttySIF0 marker=1")] * 2  # once per load: dry run, then real


def test_user_mode_builds_once_and_loads_what_it_shows(tmp_path, sysfs, monkeypatch):
    from pykexec.boot import usermode
    from tests.unit.backends.test_loader import QEMU_GUEST
    from pykexec.machine import description
    calls = []
    real = usermode.build_user_load

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)
    monkeypatch.setattr(usermode, "build_user_load", counting)
    image = tmp_path / "bzImage"
    image.write_bytes(builders.bzimage(init_size=0x800000))
    fake = FakeSyscalls()
    _, report, loaded = api.load(api.LoadOptions(image=image, mode="user", command_line="console=ttyS0"),
                                 syscalls=fake, sysfs=sysfs, machine=description.load(QEMU_GUEST),
                                 efivars=sysfs / "none")
    assert len(calls) == 1
    (_, entry, segments, _), = fake.calls
    assert entry == loaded.entry and [s.buf for s in segments] == [s.buf for s in loaded.segments]


def test_the_purgatory_reports_its_own_size():
    pc_1g = qemu_machine("qemu-pc-1g-debian6.1.iomem", possible_cpus=1)
    p = plan(debian61_bzimage(), machine=pc_1g, target="linux-user")
    image = purgatory.load()
    seg = p.segments[0]
    assert seg.role == "purgatory" and seg.bufsz == len(image.data)
    assert seg.memsz == -(-max(image.mem_size, len(image.data)) // 4096) * 4096


def test_default_target_follows_the_table():
    pc_1g = qemu_machine("qemu-pc-1g-debian6.1.iomem", possible_cpus=1)
    assert default_target(debian61_bzimage(), pc_1g) == "linux-file"
    assert default_target(debian61_bzimage(version=0x20B), pc_1g) == "linux-user"
    riscv = prepare(builders.riscv_image()).kernel_layer
    assert default_target(riscv, riscv_machine()) == "linux-user"
    arm64 = prepare(builders.arm64_image()).kernel_layer
    assert find("aarch64", arm64, "linux-file") is find("arm64", arm64, "linux-file") is not None
    assert find(None, arm64, "linux-file") is find("arm64", arm64, "linux-file")
    assert find("x86_64", arm64, "linux-file") is None


@pytest.mark.parametrize("name, canonical", [
    ("aarch64", "arm64"), ("amd64", "x86_64"), ("i686", "x86"), ("riscv", "riscv64"),
    ("riscv64", "riscv64"), ("ppc64le", "ppc64"), ("powerpc", "ppc64"), ("loongarch", "loongarch64"),
    ("armhf", "arm"), (None, None)])
def test_architecture_names_are_normalised_once(name, canonical):
    assert normalize_arch(name) == canonical


def test_images_run_on_their_own_family_only():
    assert runs_on("riscv64", "riscv") and runs_on("ppc64", "powerpc") and runs_on("x86", "x86_64")
    assert not runs_on("arm64", "x86_64") and not runs_on("x86_64", "x86")


def test_a_foreign_image_is_refused_by_a_dry_run(tmp_path, sysfs):
    image = tmp_path / "Image"
    image.write_bytes(builders.riscv_image())
    with pytest.raises(LoadRefused, match=r"\(riscv-image\) is for riscv64, but this machine is x86_64"):
        api.load(api.LoadOptions(image=image, require_signature=False), dry_run=True,
                 syscalls=FakeSyscalls(), sysfs=sysfs, machine=Machine(arch="x86_64"),
                 efivars=sysfs / "none")


def test_plan_and_a_user_mode_dry_run_agree_on_a_multiboot2_image(tmp_path, sysfs):
    """Only a build places a Multiboot image: plan shows that build, as load --dry-run does."""
    from pykexec.machine import description
    from tests.unit.backends.test_loader import QEMU_GUEST
    image = tmp_path / "xen.elf"
    image.write_bytes(builders.multiboot2_image())
    machine = description.load(QEMU_GUEST)
    planned = plan(prepare(image.read_bytes()), machine=machine, target="linux-user",
                   cmdline="console=com1", image_name="xen.elf")
    _, _, shown = api.load(api.LoadOptions(image=image, mode="user", command_line="console=com1",
                                           require_signature=False), dry_run=True,
                           syscalls=FakeSyscalls(), sysfs=sysfs, machine=machine,
                           efivars=sysfs / "none")
    assert [s.role for s in planned.segments] == [s.role for s in shown.segments]
    assert [(s.mem, s.memsz) for s in planned.segments] == [(s.mem, s.memsz) for s in shown.segments]
    assert planned.cmdline == shown.cmdline == "xen.elf console=com1"


def test_an_asked_for_entry_sends_the_load_to_kexec_load(tmp_path, sysfs):
    """kexec-tools' --entry-32bit and --real-mode are kexec_load's (bzImage64_load_file refuses them)."""
    image = tmp_path / "bzImage"
    image.write_bytes(builders.bzimage(version=0x20F, xloadflags=0x7F, loadflags=0x81, kernel_alignment=0x200000,
                                       init_size=0x3378000, pref_address=0x1000000, initrd_addr_max=0x7FFFFFFF))
    machine = qemu_machine("qemu-pc-1g-debian6.1.iomem")
    kw = dict(syscalls=FakeSyscalls(), sysfs=sysfs, machine=machine, efivars=sysfs / "none")
    for bits, note in ((32, "32-bit boot protocol"), (16, "real-mode entry")):
        _, _, shown = api.load(api.LoadOptions(image=image, entry=bits, command_line="console=ttyS0",
                                               require_signature=False), dry_run=True, **kw)
        planned = plan(prepare(image.read_bytes()), machine=machine, entry=bits, cmdline="console=ttyS0")
        assert shown.target == planned.target == "linux-user" and any(note in n for n in shown.notes)
        assert [(s.role, s.mem, s.memsz) for s in shown.segments] == [(s.role, s.mem, s.memsz) for s in planned.segments]
    with pytest.raises(UsageError, match=r"--entry 32: the receivers this load may use \(linux-file\) choose"):
        api.load(api.LoadOptions(image=image, entry=32, mode="file", require_signature=False), dry_run=True, **kw)
    (sysfs / "kernel" / "security" / "lockdown").write_text("none [integrity] confidentiality\n")
    with pytest.raises(LoadRefused, match="refuses kexec_load, so --entry 16 cannot work"):
        api.load(api.LoadOptions(image=image, entry=16, require_signature=False), dry_run=True, **kw)
