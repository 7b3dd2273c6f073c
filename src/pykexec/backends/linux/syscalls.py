"""The Linux kexec system calls through ctypes: kexec_file_load, kexec_load, reboot.

uapi: include/uapi/linux/kexec.h (flags), include/uapi/linux/reboot.h
(LINUX_REBOOT_CMD_KEXEC).  ``kexec_file_load(kernel_fd, initrd_fd,
cmdline_len, cmdline, flags)`` takes a NUL-terminated command line whose
length counts the NUL; ``kexec_load(entry, nr_segments, segments, flags)``
takes ``struct kexec_segment { void *buf; size_t bufsz; unsigned long mem;
size_t memsz; }`` and the architecture in the high 16 bits of flags.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

from ...errors import PykexecError, SyscallError

KEXEC_FILE_UNLOAD = 0x01
KEXEC_FILE_ON_CRASH = 0x02
KEXEC_FILE_NO_INITRAMFS = 0x04
KEXEC_FILE_DEBUG = 0x08
KEXEC_ON_CRASH = 0x01
KEXEC_PRESERVE_CONTEXT = 0x02
LINUX_REBOOT_CMD_KEXEC = 0x45584543
KEXEC_ARCH = {"x86_64": 62 << 16, "aarch64": 183 << 16, "riscv64": 243 << 16,
              "loongarch64": 258 << 16, "i686": 3 << 16}

# (kexec_file_load, kexec_load) syscall numbers; asm-generic numbering for new arches.
SYSCALLS = {"x86_64": (320, 246), "aarch64": (294, 104), "riscv64": (294, 104),
            "loongarch64": (294, 104), "ppc64le": (382, 268), "s390x": (381, 277)}


@dataclass(frozen=True)
class UserSegment:
    """One kexec_load segment: bytes (or a view of them) and where they go."""

    buf: bytes | memoryview
    mem: int
    memsz: int


class Syscalls(Protocol):
    """What a backend needs from the kernel; tests substitute a recording fake."""

    def kexec_file_load(self, kernel_fd: int, initrd_fd: int, cmdline: str | None,
                        flags: int) -> None: ...

    def kexec_load(self, entry: int, segments: Sequence[UserSegment], flags: int) -> None: ...

    def reboot_kexec(self) -> None: ...

    def sync(self) -> None: ...


class LinuxSyscalls:
    """The real system calls, raising :class:`SyscallError` with the errno.

    ctypes is imported here, when a call is to be made, not with the module:
    a dry run reads the lockdown state from this module and makes no call.
    """

    def __init__(self, machine: str | None = None) -> None:
        import ctypes
        self.machine = machine or os.uname().machine
        if self.machine not in SYSCALLS:
            raise SyscallError("kexec", errno.ENOSYS, f"no kexec syscall numbers for {self.machine}")
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.syscall.restype = ctypes.c_long

    def _call(self, name: str, *args) -> None:
        import ctypes
        if self.libc.syscall(*args) != 0:
            err = ctypes.get_errno()
            raise SyscallError(name, err, os.strerror(err))

    def kexec_file_load(self, kernel_fd: int, initrd_fd: int, cmdline: str | None,
                        flags: int) -> None:
        import ctypes
        raw = None if cmdline is None else cmdline.encode() + b"\0"
        self._call("kexec_file_load", ctypes.c_long(SYSCALLS[self.machine][0]),
                   ctypes.c_int(kernel_fd), ctypes.c_int(initrd_fd),
                   ctypes.c_ulong(0 if raw is None else len(raw)),
                   ctypes.c_char_p(raw), ctypes.c_ulong(flags))

    def kexec_load(self, entry: int, segments: Sequence[UserSegment], flags: int) -> None:
        import ctypes
        pinned = [pin(s.buf) for s in segments]  # kept alive until the kernel has copied them
        table = segment_table([(address, len(s.buf), s.mem, s.memsz)
                               for (_, address), s in zip(pinned, segments)])
        self._call("kexec_load", ctypes.c_long(SYSCALLS[self.machine][1]), ctypes.c_ulong(entry),
                   ctypes.c_ulong(len(segments)), table if segments else None,
                   ctypes.c_ulong(flags | KEXEC_ARCH.get(self.machine, 0)))

    def reboot_kexec(self) -> None:
        import ctypes
        if self.libc.reboot(ctypes.c_int(LINUX_REBOOT_CMD_KEXEC)) != 0:
            err = ctypes.get_errno()
            raise SyscallError("reboot(LINUX_REBOOT_CMD_KEXEC)", err, os.strerror(err))

    def sync(self) -> None:
        os.sync()


def segment_table(entries: Sequence[tuple[int, int, int, int]]):
    """``struct kexec_segment[]`` from (buf address, bufsz, mem, memsz) entries."""
    import ctypes

    class KexecSegment(ctypes.Structure):
        _fields_ = [("buf", ctypes.c_void_p), ("bufsz", ctypes.c_size_t),
                    ("mem", ctypes.c_ulong), ("memsz", ctypes.c_size_t)]
    return (KexecSegment * len(entries))(*[KexecSegment(*e) for e in entries])


def pin(buf: bytes | memoryview) -> tuple[object, int]:
    """The address of ``buf``'s first byte, and the object that keeps it valid.

    The kernel copies the segments itself, so they are not copied here: a
    ``bytes`` object is pointed at where it lies, and so is a writable buffer
    (a file mapped copy-on-write, a bytearray).  Only a read-only view of
    something else, whose address ctypes cannot take, is copied.
    """
    import ctypes
    if isinstance(buf, bytes):
        pointer = ctypes.c_char_p(buf)
        return pointer, ctypes.cast(pointer, ctypes.c_void_p).value or 0
    view = memoryview(buf).cast("B")
    array_type = ctypes.c_char * len(view)
    array = array_type.from_buffer_copy(view) if view.readonly else array_type.from_buffer(view)
    return array, ctypes.addressof(array)


@dataclass(frozen=True)
class Status:
    """What /sys/kernel says is loaded."""

    loaded: bool | None
    crash_loaded: bool | None
    crash_size: int | None
    #: Kexec HandOver is on in the running kernel (see pykexec.machine.snapshot)
    kho_active: bool | None = False
    #: the next exec hands over (KHO active and a kernel loaded; pykexec loads it only with
    #: kexec_file_load then, though sysfs cannot show which call another tool used)
    kho_handover: bool | None = False


def read_status(sysfs: Path = Path("/sys")) -> Status:
    def read(name: str) -> int | None:
        try:
            return int((sysfs / "kernel" / name).read_text().strip())
        except (OSError, ValueError):
            return None
    loaded, crash = read("kexec_loaded"), read("kexec_crash_loaded")
    return Status(loaded=None if loaded is None else bool(loaded),
                  crash_loaded=None if crash is None else bool(crash),
                  crash_size=read("kexec_crash_size"))


def read_lockdown(sysfs: Path = Path("/sys")) -> str | None:
    """The bracketed word of /sys/kernel/security/lockdown, or None if unreadable."""
    try:
        text = (sysfs / "kernel" / "security" / "lockdown").read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def memfd(name: str, data: bytes | memoryview) -> int:
    """An anonymous file holding ``data``: what we prepared never touches disk."""
    try:
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
    except OSError as e:
        raise PykexecError(f"memfd_create: {e.strerror}: pykexec hands the kernel what it prepared "
                           f"({name}) through a memfd, and this kernel has none (CONFIG_MEMFD_CREATE); "
                           "load a plain kernel file, or use --mode user") from None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:  # interrupted or out of memory: the caller never sees the fd
        os.close(fd)
        raise
    return fd
