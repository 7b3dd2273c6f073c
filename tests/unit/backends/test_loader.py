"""The load policy: syscall choice, fallback, fds vs memfds, cmdline composition."""

from __future__ import annotations

import errno
import gzip
import os
import struct
from pathlib import Path

import pytest

from pykexec import api
from pykexec.backends.linux import control, policy
from pykexec.backends.linux.syscalls import (KEXEC_FILE_DEBUG, KEXEC_FILE_NO_INITRAMFS,
                                    KEXEC_FILE_ON_CRASH, KEXEC_FILE_UNLOAD)
from pykexec.errors import LoadRefused, PykexecError, SignatureRejected, SyscallError, UsageError

from pykexec.machine import description
from pykexec.machine.model import Machine
from pykexec.machine.ranges import TypedRange
from tests import builders
from tests.unit.machine.dtb import arm64_virt

from .fakes import FakeSyscalls


def run_load(opts: api.LoadOptions, fake: FakeSyscalls, sysfs: Path, *,
             machine: Machine = Machine(arch="arm64"), **kw):
    """api.load on a described machine, with no efivarfs: hermetic."""
    return api.load(opts, syscalls=fake, sysfs=sysfs, machine=machine,
                    efivars=sysfs / "no-efivars", **kw)


QEMU_GUEST = Path(__file__).parents[2] / "data" / "machines" / "qemu-pc-1g-debian6.1.iomem"


def arm64_image(size: int = 0x3000) -> bytes:
    """A minimal arm64 Image: the booting.rst header, magic at 0x38."""
    img = bytearray(size)
    struct.pack_into("<QQQ", img, 8, 0, size, 0b1010)
    struct.pack_into("<I", img, 0x38, 0x644D5241)
    return bytes(img)


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    (root / "kernel" / "security").mkdir(parents=True)
    (root / "kernel" / "security" / "lockdown").write_text("[none] integrity confidentiality\n")
    (root / "kernel" / "kexec_loaded").write_text("0\n")
    return root


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_plain_image_passes_original_file_and_initrd(tmp_path, sysfs):
    image = write(tmp_path, "Image", arm64_image())
    initrd = write(tmp_path, "initrd", b"cpio" * 100)
    fake = FakeSyscalls()
    summary, report, _ = run_load(api.LoadOptions(image=image, initrds=(initrd,),
                                                  command_line="console=ttyAMA0"), fake, sysfs)
    (call, kernel, got_initrd, cmdline, flags), = fake.calls
    assert (call, kernel, got_initrd, cmdline, flags) == (
        "kexec_file_load", image.read_bytes(), initrd.read_bytes(), "console=ttyAMA0", 0)
    assert summary.kernel_source == "original file"
    assert report.syscall == "kexec_file_load"


def test_gzip_image_goes_through_memfd_decompressed(tmp_path, sysfs):
    raw = arm64_image()
    image = write(tmp_path, "Image.gz", gzip.compress(raw))
    fake = FakeSyscalls()
    summary, _, _ = run_load(api.LoadOptions(image=image, crash=True), fake, sysfs)
    _, kernel, initrd, cmdline, flags = fake.calls[0]
    assert kernel == raw and initrd is None and cmdline is None
    assert flags == KEXEC_FILE_ON_CRASH | KEXEC_FILE_NO_INITRAMFS
    assert summary.kernel_source == "memfd (prepared)"


def test_dry_run_makes_no_call(tmp_path, sysfs):
    fake = FakeSyscalls()
    summary, report, _ = run_load(api.LoadOptions(image=write(tmp_path, "I", arm64_image())),
                                  fake, sysfs, dry_run=True)
    assert report is None and fake.calls == [] and summary.kernel_format == "arm64-image"


@pytest.mark.parametrize("err", [errno.EKEYREJECTED, errno.ENOKEY, errno.EBADMSG, errno.EPERM])
def test_signature_errors_never_fall_back(tmp_path, sysfs, err):
    fake = FakeSyscalls(fail={"kexec_file_load": err})
    with pytest.raises(SyscallError) as info:
        run_load(api.LoadOptions(image=write(tmp_path, "I", arm64_image())), fake, sysfs)
    assert [c[0] for c in fake.calls] == ["kexec_file_load"]
    assert info.value.errno_value == err and info.value.advice


ARM64_RAM = Machine(arch="arm64", memory=(TypedRange(0x40000000, 0x40000000, "System RAM", 0),),
                   memory_source="description")


@pytest.mark.parametrize("err", sorted(policy.FALLBACK_ERRNOS))
def test_fallback_errnos_build_an_arm64_kexec_load(tmp_path, sysfs, err):
    (sysfs / "firmware").mkdir()
    (sysfs / "firmware" / "fdt").write_bytes(arm64_virt())
    fake = FakeSyscalls(fail={"kexec_file_load": err})
    _, report, _ = run_load(api.LoadOptions(image=write(tmp_path, "I", arm64_image()),
                                            command_line="console=ttyAMA0 marker=7"), fake, sysfs,
                            machine=ARM64_RAM)
    assert [c[0] for c in fake.calls] == ["kexec_file_load", "kexec_load"]
    (_, entry, segments, flags) = fake.calls[1]
    assert report.syscall == "kexec_load" and flags == 0
    assert any(bytes(s.buf).startswith(b"\xd0\x0d\xfe\xed") and b"console=ttyAMA0 marker=7" in bytes(s.buf)
               for s in segments)
    assert any(s.mem <= entry < s.mem + s.memsz for s in segments)


def test_arm64_fallback_without_a_device_tree_says_so(tmp_path, sysfs):
    fake = FakeSyscalls(fail={"kexec_file_load": errno.ENOSYS})
    with pytest.raises(LoadRefused, match="no device tree.*pass --dtb FILE"):
        run_load(api.LoadOptions(image=write(tmp_path, "I", arm64_image())), fake, sysfs, machine=ARM64_RAM)
    assert [c[0] for c in fake.calls] == ["kexec_file_load"]


def test_arm64_user_mode_takes_the_dtb_given(tmp_path, sysfs):
    fake = FakeSyscalls()
    dtb = write(tmp_path, "board.dtb", arm64_virt())
    run_load(api.LoadOptions(image=write(tmp_path, "I", arm64_image()), mode="user", dtb=dtb,
                             command_line="from-the-file"), fake, sysfs, machine=ARM64_RAM)
    (_, _, segments, _), = fake.calls
    assert any(b"from-the-file" in bytes(s.buf) for s in segments)


def test_fallback_builds_a_kexec_load_on_x86(tmp_path, sysfs):
    machine = description.load(QEMU_GUEST)
    image = write(tmp_path, "bzImage", builders.bzimage(init_size=0x800000))
    fake = FakeSyscalls(fail={"kexec_file_load": errno.ENOEXEC})
    summary, report, _ = run_load(api.LoadOptions(image=image, command_line="console=ttyS0"),
                                  fake, sysfs, machine=machine)
    (_, entry, segments, flags), = fake.calls[1:]
    assert report.syscall == "kexec_load" and report.attempts[0] == "kexec_file_load: ENOEXEC"
    assert len(segments) >= 3 and flags == 0
    assert any(b"console=ttyS0" in bytes(s.buf) for s in segments)
    assert any(s.mem <= entry < s.mem + s.memsz for s in segments)


def test_auto_skips_kexec_file_load_when_bzimage64_probe_refuses(tmp_path, sysfs):
    """kexec -a: kexec_file_load fails with ENOEXEC for a bzImage without XLF_CAN_BE_LOADED_ABOVE_4G and
    kexec_load takes it through the 32-bit entry; pykexec knows the probe's answer and goes there directly."""
    machine = description.load(QEMU_GUEST)
    image = write(tmp_path, "memtest", builders.bzimage(version=0x20C, xloadflags=0x9, relocatable_kernel=0,
                                                         loadflags=0x01, init_size=0x6ACF8))
    fake = FakeSyscalls()
    _, report, shown = run_load(api.LoadOptions(image=image, command_line="console=ttyS0",
                                                require_signature=False), fake, sysfs, machine=machine)
    assert [c[0] for c in fake.calls] == ["kexec_load"] and report.syscall == "kexec_load"
    assert shown.target == "linux-user" and [s.mem for s in shown.segments if s.role == "kernel"] == [0x100000]
    (sysfs / "kernel" / "security" / "lockdown").write_text("none [integrity] confidentiality\n")
    with pytest.raises(LoadRefused, match="cannot be loaded above 4G"):
        run_load(api.LoadOptions(image=image, require_signature=False), FakeSyscalls(), sysfs, machine=machine)


def test_no_fallback_under_lockdown(tmp_path, sysfs):
    (sysfs / "kernel" / "security" / "lockdown").write_text("none [integrity] confidentiality\n")
    fake = FakeSyscalls(fail={"kexec_file_load": errno.ENOEXEC})
    with pytest.raises(SyscallError, match="ENOEXEC"):
        run_load(api.LoadOptions(image=write(tmp_path, "I", arm64_image()),
                                 require_signature=False), fake, sysfs)


def test_user_mode_refused_up_front_under_lockdown(tmp_path, sysfs):
    (sysfs / "kernel" / "security" / "lockdown").write_text("none [integrity] confidentiality\n")
    fake = FakeSyscalls()
    with pytest.raises(LoadRefused, match="lockdown"):
        run_load(api.LoadOptions(image=write(tmp_path, "I", arm64_image()), mode="user",
                                 require_signature=False), fake, sysfs)
    assert fake.calls == []


def test_debug_flag(tmp_path, sysfs):
    fake = FakeSyscalls()
    run_load(api.LoadOptions(image=write(tmp_path, "I", arm64_image()), debug=True), fake, sysfs)
    assert fake.calls[0][4] & KEXEC_FILE_DEBUG


def test_several_initrds_are_joined_in_a_memfd(tmp_path, sysfs):
    a, b = write(tmp_path, "a", b"12345"), write(tmp_path, "b", b"678")
    fake = FakeSyscalls()
    run_load(api.LoadOptions(image=write(tmp_path, "I", arm64_image()), initrds=(a, b)), fake, sysfs)
    assert fake.calls[0][2] == b"12345" + bytes(3) + b"678" + bytes(1)


@pytest.mark.parametrize("kwargs, expected", [
    ({}, "uki cmdline"),
    ({"append": "x=1"}, "uki cmdline x=1"),
    ({"command_line": "a b"}, "a b"),
    ({"reuse": True}, "root=/dev/vda quiet"),
    ({"reuse": True, "append": "m=1"}, "root=/dev/vda quiet m=1"),
])
def test_compose_cmdline(tmp_path, kwargs, expected):
    proc = write(tmp_path, "cmdline", b"BOOT_IMAGE=/vmlinuz root=/dev/vda initrd=/i quiet\n")
    assert api.compose_cmdline("uki cmdline", proc_cmdline=proc, **kwargs) == expected


@pytest.mark.parametrize("kwargs", [{"command_line": "a", "append": "b"},
                                    {"command_line": "a", "reuse": True}])
def test_command_line_excludes_append_and_reuse(tmp_path, kwargs):
    proc = write(tmp_path, "cmdline", b"root=/dev/vda\n")
    with pytest.raises(UsageError, match="--command-line alone"):
        api.compose_cmdline("uki cmdline", proc_cmdline=proc, **kwargs)


def test_unload_uses_file_unload_flag():
    fake = FakeSyscalls()
    assert control.unload(fake, crash=True, lockdown=None) == "kexec_file_load"
    assert fake.calls[0][4] == KEXEC_FILE_UNLOAD | KEXEC_FILE_ON_CRASH


def test_unload_falls_back_to_kexec_load_without_lockdown():
    fake = FakeSyscalls(fail={"kexec_file_load": errno.ENOSYS})
    assert control.unload(fake, crash=False, lockdown="none") == "kexec_load"
    assert fake.calls[1] == ("kexec_load", 0, [], 0)


def test_exec_syncs_then_reboots_and_refuses_when_nothing_loaded():
    fake = FakeSyscalls()
    control.execute(fake, loaded=True)
    assert fake.synced and fake.calls == [("reboot",)]
    with pytest.raises(LoadRefused, match="no kernel is loaded"):
        control.execute(FakeSyscalls(), loaded=False)


@pytest.mark.parametrize("err", sorted(policy.ADVICE))
def test_every_errno_gets_a_sentence(err):
    advised = policy.advise(SyscallError("kexec_file_load", err, "x"))
    assert advised.advice and errno.errorcode[err] in str(advised)


def test_lock_serialises(tmp_path):
    paths = (tmp_path / "lock",)
    with policy.LoadLock(paths=paths):
        with pytest.raises(Exception, match="load lock"):
            with policy.LoadLock(timeout=0.2, paths=paths):
                pass


@pytest.mark.parametrize("err", sorted(policy.NO_LOCKING_ERRNOS))
def test_a_kernel_without_file_locking_loads_unserialised_and_says_so(tmp_path, monkeypatch, caplog, err):
    def no_locks(fd, op):
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(policy.fcntl, "flock", no_locks)
    with caplog.at_level("WARNING"):
        with policy.LoadLock(paths=(tmp_path / "lock",)):
            pass
    assert "CONFIG_FILE_LOCKING" in caplog.text and os.strerror(err) in caplog.text


def test_another_flock_failure_names_the_call(tmp_path, monkeypatch):
    def broken(fd, op):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(policy.fcntl, "flock", broken)
    with pytest.raises(PykexecError, match=r"flock of the load lock: Input/output error \(EIO\)"):
        with policy.LoadLock(paths=(tmp_path / "lock",)):
            pass


def test_a_kernel_without_memfd_gets_the_reason_and_a_way_out(monkeypatch):
    from pykexec.backends.linux import syscalls

    def no_memfd(name, flags):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
    monkeypatch.setattr(syscalls.os, "memfd_create", no_memfd)
    with pytest.raises(PykexecError, match=r"memfd_create: Function not implemented.*CONFIG_MEMFD_CREATE.*"
                                           r"plain kernel file, or use --mode user"):
        syscalls.memfd("kernel", b"data")


def test_an_os_error_without_a_file_names_its_errno():
    from pykexec.cli import os_error
    assert os_error(OSError(errno.ENOSYS, "Function not implemented")) == "Function not implemented (ENOSYS)"
    assert os_error(FileNotFoundError(errno.ENOENT, "No such file or directory", "/x")) == \
        "/x: No such file or directory (ENOENT)"


def test_unsigned_image_refused_under_lockdown_before_any_call(tmp_path, sysfs):
    (sysfs / "kernel" / "security" / "lockdown").write_text("none [integrity] confidentiality\n")
    fake = FakeSyscalls()
    with pytest.raises(SignatureRejected):
        run_load(api.LoadOptions(image=write(tmp_path, "I", arm64_image())), fake, sysfs)
    assert fake.calls == []


def test_initrd_over_half_of_ram_is_refused_before_it_is_read(tmp_path, sysfs):
    machine = description.load(QEMU_GUEST)
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(machine.totalram() // 2 + (1 << 20))  # sparse: reading it would cost RAM
    fake = FakeSyscalls()
    with pytest.raises(LoadRefused, match="half of RAM"):
        run_load(api.LoadOptions(image=write(tmp_path, "I", arm64_image()), initrds=(big,)),
                 fake, sysfs, machine=machine)
    assert fake.calls == []


def test_a_dry_runs_plan_hashes_the_files_it_never_read(tmp_path, sysfs):
    """The plan views the mapped files: after the load has returned (its files closed), the
    segments still hash to the files' bytes, zero-filled to memsz as the purgatory checks."""
    import hashlib
    import os
    kernel = builders.bzimage(init_size=0x800000)
    initrd = os.urandom(3 * 4096)
    _, _, plan = run_load(api.LoadOptions(image=write(tmp_path, "bzImage", kernel),
                                          initrds=(write(tmp_path, "initrd", initrd),), mode="file"),
                          FakeSyscalls(), sysfs, machine=description.load(QEMU_GUEST), dry_run=True)
    segments = {s.role: s for s in plan.segments}
    setup = (4 + 1) * 512  # the builder's four setup sectors and the boot sector
    payload = kernel[setup:] + bytes(segments["kernel"].memsz - len(kernel) + setup)
    assert segments["kernel"].sha256 == hashlib.sha256(payload).hexdigest()
    assert segments["initrd"].sha256 == hashlib.sha256(initrd).hexdigest()


def test_kexec_load_points_at_the_segments_without_copying():
    """pin(): the kernel copies the segments, so a writable view (a mapped file) is passed where
    it lies, as is a bytes object; only a read-only view of something else is copied."""
    import ctypes

    from pykexec.backends.linux.syscalls import pin
    backing = bytearray(b"0123456789")
    _, address = pin(memoryview(backing)[2:6])
    ctypes.memmove(address, b"AB", 2)
    assert backing == bytearray(b"01AB456789")
    data = b"kernel bytes"
    keep, address = pin(data)
    assert ctypes.string_at(address, len(data)) == data
    keep, address = pin(memoryview(data)[7:])
    assert ctypes.string_at(address, 5) == b"bytes"


def test_arm64_user_mode_under_lockdown_is_refused_before_anything_is_built(tmp_path, sysfs):
    (sysfs / "kernel" / "security" / "lockdown").write_text("none [integrity] confidentiality\n")
    fake = FakeSyscalls()
    with pytest.raises(LoadRefused, match="lockdown is 'integrity': the kernel refuses kexec_load"):
        run_load(api.LoadOptions(image=write(tmp_path, "I", arm64_image()), mode="user",
                                 require_signature=False), fake, sysfs, machine=ARM64_RAM)
    assert fake.calls == []
