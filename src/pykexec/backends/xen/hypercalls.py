"""Xen's kexec and memory hypercalls from dom0, through ``/dev/xen/privcmd``.

The ABI, each layout declared once here:

* Xen ``xen/include/public/xen.h``: ``__HYPERVISOR_memory_op`` = 12,
  ``__HYPERVISOR_kexec_op`` = 37.
* Xen ``xen/include/public/kexec.h``:

  - ``KEXEC_CMD_kexec`` 0, ``kexec_get_range`` 3, ``kexec_load`` 4,
    ``kexec_unload`` 5, ``kexec_status`` 6 (1 and 2 are the retired v1 calls);
  - ``KEXEC_TYPE_DEFAULT`` 0, ``KEXEC_TYPE_CRASH`` 1; the EFI types, in
    XenServer's Xen only (``xenserver-next/xen`` 85d0be0de4; docs/xen.md):
    ``KEXEC_TYPE_DEFAULT_EFI`` 2, ``KEXEC_TYPE_CRASH_EFI`` 3, for which
    ``entry_maddr`` is read as ``parameters`` (the boot_params address);
  - ``KEXEC_RANGE_MA_CRASH`` 0, ``XEN`` 1, ``CPU`` 2, ``XENHEAP`` 3,
    ``BOOT_PARAM`` 4, ``EFI_MEMMAP`` 5, ``VMCOREINFO`` 6;
  - ``xen_kexec_exec_t {int type;}``;
  - ``xen_kexec_range_t {int32_t range; int32_t nr; unsigned long size; unsigned long start;}``;
  - ``xen_kexec_segment_t {handle|u64 buf; u64 buf_size; xen_pfn_t dest_maddr; u64 dest_size;}``
    (despite its type, ``dest_maddr`` is a byte address);
  - ``xen_kexec_load_t {u8 type; u8 _pad; u16 arch (EM_*); u32 nr_segments;
    handle|u64 segments; u64 entry_maddr;}``;
  - ``xen_kexec_unload_t``, ``xen_kexec_status_t {u8 type;}``; kexec_status
    returns 1 when an image of that type is loaded, else 0.
* Xen ``xen/include/public/memory.h``: ``XENMEM_machine_memory_map`` = 10 takes
  ``struct xen_memory_map {unsigned int nr_entries; XEN_GUEST_HANDLE(void) buffer;}``,
  fills ``buffer`` with packed e820 entries ``{u64 addr; u64 size; u32 type;}``
  and writes back ``nr_entries`` (hardware domain only).
* Linux ``include/uapi/xen/privcmd.h``: ``struct privcmd_hypercall {__u64 op;
  __u64 arg[5];}``, ``IOCTL_PRIVCMD_HYPERCALL = _IOC(_IOC_NONE, 'P', 0,
  sizeof(struct privcmd_hypercall))``.  The ioctl returns the hypercall's
  return value; a negative one comes back as -1 with errno set.

Why privcmd and not libxencall (``libxencall1`` through ctypes): both are
stable ABIs, and libxencall is itself a wrapper around this very ioctl.
Going to the device directly needs no package in dom0 beyond the kernel's
``xen-privcmd`` module (Debian's Xen utilities are not installed in a minimal
dom0, and a dlopen of a missing library is one more way to fail), keeps the
call in one place we can read, and lets the tests substitute the
:class:`Hypercalls` protocol.  libxenctrl is never used: its ABI changes with
every Xen release.

Buffers.  Xen reads the structures and the segments' bytes from dom0's
virtual addresses while the hypercall runs, so they must stay mapped: a page
that is swapped out or being migrated makes the hypercall fail with EFAULT.
Small buffers come from ``/dev/xen/hypercall`` (Linux privcmd-buf.c: pages the
kernel never moves, at most ``limit`` = 64 pages per mapping) as libxencall
allocates them; when that device is absent, and for the segments' bytes
(megabytes), they are anonymous mappings locked with ``mlock``, which is
libxencall's own fallback.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

from ...errors import SyscallError
from ...formats.layer import Buffer

__HYPERVISOR_memory_op = 12
__HYPERVISOR_kexec_op = 37
HYPERVISOR_MEMORY_OP = __HYPERVISOR_memory_op
HYPERVISOR_KEXEC_OP = __HYPERVISOR_kexec_op

KEXEC_CMD_kexec = 0
KEXEC_CMD_kexec_get_range = 3
KEXEC_CMD_kexec_load = 4
KEXEC_CMD_kexec_unload = 5
KEXEC_CMD_kexec_status = 6

KEXEC_TYPE_DEFAULT = 0
KEXEC_TYPE_CRASH = 1
KEXEC_TYPE_DEFAULT_EFI = 2
KEXEC_TYPE_CRASH_EFI = 3
KEXEC_TYPES = {KEXEC_TYPE_DEFAULT: "KEXEC_TYPE_DEFAULT", KEXEC_TYPE_CRASH: "KEXEC_TYPE_CRASH",
               KEXEC_TYPE_DEFAULT_EFI: "KEXEC_TYPE_DEFAULT_EFI", KEXEC_TYPE_CRASH_EFI: "KEXEC_TYPE_CRASH_EFI"}
KEXEC_TYPE_NUMBERS = {name: number for number, name in KEXEC_TYPES.items()}

KEXEC_RANGE_MA_CRASH = 0
KEXEC_RANGE_MA_XEN = 1
KEXEC_RANGE_MA_CPU = 2
KEXEC_RANGE_MA_XENHEAP = 3
KEXEC_RANGE_MA_BOOT_PARAM = 4
KEXEC_RANGE_MA_EFI_MEMMAP = 5
KEXEC_RANGE_MA_VMCOREINFO = 6

XENMEM_machine_memory_map = 10
#: Xen's hypervisor limit: nr_segments >= KEXEC_SEGMENT_MAX is refused (xen/common/kexec.c)
KEXEC_SEGMENT_MAX = 16
EM_X86_64 = 62

#: xen_kexec_load_t
KEXEC_LOAD = struct.Struct("<BBHIQQ")
#: xen_kexec_segment_t
KEXEC_SEGMENT = struct.Struct("<QQQQ")
#: xen_kexec_range_t (LP64: unsigned long is 8 bytes)
KEXEC_RANGE = struct.Struct("<iiQQ")
#: xen_kexec_exec_t
KEXEC_EXEC = struct.Struct("<i")
#: xen_kexec_unload_t and xen_kexec_status_t
KEXEC_TYPE_ARG = struct.Struct("<B")
#: struct xen_memory_map (the handle is 8-byte aligned)
MEMORY_MAP = struct.Struct("<I4xQ")
#: struct e820entry as Xen copies it out (packed)
E820_ENTRY = struct.Struct("<QQI")
#: struct privcmd_hypercall
PRIVCMD_HYPERCALL = struct.Struct("<6Q")

_IOC_NONE = 0
IOCTL_PRIVCMD_HYPERCALL = (_IOC_NONE << 30) | (PRIVCMD_HYPERCALL.size << 16) | (ord("P") << 8) | 0

PRIVCMD = Path("/dev/xen/privcmd")
HYPERCALL_BUF = Path("/dev/xen/hypercall")
PRIVCMD_BUF_LIMIT_PAGES = 64        # privcmd-buf.c: module parameter "limit", default 64
MAX_MEMORY_MAP_ENTRIES = 1024


@dataclass(frozen=True)
class XenSegment:
    """One ``xen_kexec_segment_t``: bytes (None: a null segment, no buffer) and where they go.
    ``buf`` may be a view of the file that was read: it is copied once, into the hypercall buffer."""

    buf: Buffer | None
    dest_maddr: int
    dest_size: int


class Hypercalls(Protocol):
    """What the Xen backend needs from the hypervisor; tests substitute a recording fake.

    Each method raises :class:`SyscallError` (call named as the hypercall,
    errno as Xen returned it).
    """

    def kexec_load(self, kexec_type: int, entry_maddr: int, segments: Sequence[XenSegment],
                   arch: int = EM_X86_64) -> None: ...

    def kexec_unload(self, kexec_type: int) -> None: ...

    def kexec_status(self, kexec_type: int) -> bool: ...

    def kexec_get_range(self, range_: int, nr: int = 0) -> tuple[int, int]:
        """(start, size) of the machine range."""
        ...

    def kexec_exec(self, kexec_type: int) -> None: ...

    def machine_memory_map(self) -> list[tuple[int, int, int]]:
        """The machine's e820 as Xen holds it: (addr, size, type)."""
        ...


class _Buffer:
    """Hypercall-safe memory: a /dev/xen/hypercall mapping, or an mlock'd anonymous one."""

    def __init__(self, size: int, *, device: Path | None) -> None:
        page = mmap.PAGESIZE
        self.size = max(page, -(-size // page) * page)
        self.map: mmap.mmap | None = None
        if device is not None and self.size // page <= PRIVCMD_BUF_LIMIT_PAGES:
            try:
                fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                fd = -1
            if fd >= 0:
                try:
                    self.map = mmap.mmap(fd, self.size, flags=mmap.MAP_SHARED,
                                         prot=mmap.PROT_READ | mmap.PROT_WRITE)
                except OSError:
                    self.map = None
                finally:
                    os.close(fd)
        if self.map is None:
            self.map = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                                 prot=mmap.PROT_READ | mmap.PROT_WRITE)
            self._mlock()
        self._anchor = ctypes.c_char.from_buffer(self.map)
        self.address = ctypes.addressof(self._anchor)

    def _mlock(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        anchor = ctypes.c_char.from_buffer(self.map)
        rc = libc.mlock(ctypes.c_void_p(ctypes.addressof(anchor)), ctypes.c_size_t(self.size))
        del anchor
        if rc != 0:
            err = ctypes.get_errno()
            raise SyscallError("mlock", err, f"cannot lock {self.size} bytes for the hypercall: "
                               f"{os.strerror(err)}")

    def write(self, offset: int, data: Buffer) -> None:
        self.map[offset:offset + len(data)] = data

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self.map[offset:offset + size])

    def close(self) -> None:
        if self.map is not None:
            del self._anchor
            self.map.close()     # munmap also unlocks
            self.map = None


class PrivcmdHypercalls:
    """The real hypercalls, through ``IOCTL_PRIVCMD_HYPERCALL`` on ``/dev/xen/privcmd``."""

    def __init__(self, privcmd: Path = PRIVCMD, hypercall_buf: Path | None = HYPERCALL_BUF) -> None:
        self.device = hypercall_buf if hypercall_buf is not None and hypercall_buf.exists() else None
        try:
            self.fd = os.open(privcmd, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise SyscallError("open", e.errno or errno.ENOENT, f"{privcmd}: {e.strerror}",
                               advice=no_privcmd_sentence(privcmd, e.errno)) from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def _buffer(self, size: int) -> _Buffer:
        return _Buffer(size, device=self.device)

    def hypercall(self, name: str, op: int, *args: int) -> int:
        raw = bytearray(PRIVCMD_HYPERCALL.pack(op, *args, *([0] * (5 - len(args)))))
        try:
            return fcntl.ioctl(self.fd, IOCTL_PRIVCMD_HYPERCALL, raw, True)
        except OSError as e:
            raise SyscallError(name, e.errno, os.strerror(e.errno)) from None

    def _kexec(self, name: str, cmd: int, arg: bytes) -> tuple[int, bytes]:
        buf = self._buffer(len(arg))
        try:
            buf.write(0, arg)
            ret = self.hypercall(name, HYPERVISOR_KEXEC_OP, cmd, buf.address)
            return ret, buf.read(0, len(arg))
        finally:
            buf.close()

    def kexec_load(self, kexec_type: int, entry_maddr: int, segments: Sequence[XenSegment],
                   arch: int = EM_X86_64) -> None:
        total = sum(len(s.buf) for s in segments if s.buf)
        data = self._buffer(total) if total else None
        table = self._buffer(KEXEC_SEGMENT.size * max(len(segments), 1))
        try:
            offset = 0
            raw = bytearray()
            for s in segments:
                if s.buf:
                    data.write(offset, s.buf)
                    raw += KEXEC_SEGMENT.pack(data.address + offset, len(s.buf), s.dest_maddr, s.dest_size)
                    offset += len(s.buf)
                else:
                    raw += KEXEC_SEGMENT.pack(0, 0, s.dest_maddr, s.dest_size)
            table.write(0, bytes(raw))
            self._kexec("KEXEC_CMD_kexec_load", KEXEC_CMD_kexec_load,
                        KEXEC_LOAD.pack(kexec_type, 0, arch, len(segments), table.address, entry_maddr))
        finally:
            table.close()
            if data is not None:
                data.close()

    def kexec_unload(self, kexec_type: int) -> None:
        self._kexec("KEXEC_CMD_kexec_unload", KEXEC_CMD_kexec_unload, KEXEC_TYPE_ARG.pack(kexec_type))

    def kexec_status(self, kexec_type: int) -> bool:
        ret, _ = self._kexec("KEXEC_CMD_kexec_status", KEXEC_CMD_kexec_status,
                             KEXEC_TYPE_ARG.pack(kexec_type))
        return ret == 1

    def kexec_get_range(self, range_: int, nr: int = 0) -> tuple[int, int]:
        _, out = self._kexec("KEXEC_CMD_kexec_get_range", KEXEC_CMD_kexec_get_range,
                             KEXEC_RANGE.pack(range_, nr, 0, 0))
        _, _, size, start = KEXEC_RANGE.unpack(out)
        return start, size

    def kexec_exec(self, kexec_type: int) -> None:
        self._kexec("KEXEC_CMD_kexec", KEXEC_CMD_kexec, KEXEC_EXEC.pack(kexec_type))

    def machine_memory_map(self) -> list[tuple[int, int, int]]:
        entries = self._buffer(E820_ENTRY.size * MAX_MEMORY_MAP_ENTRIES)
        ctl = self._buffer(MEMORY_MAP.size)
        try:
            ctl.write(0, MEMORY_MAP.pack(MAX_MEMORY_MAP_ENTRIES, entries.address))
            self.hypercall("XENMEM_machine_memory_map", HYPERVISOR_MEMORY_OP, XENMEM_machine_memory_map,
                           ctl.address)
            count = MEMORY_MAP.unpack(ctl.read(0, MEMORY_MAP.size))[0]
            raw = entries.read(0, E820_ENTRY.size * min(count, MAX_MEMORY_MAP_ENTRIES))
            return [E820_ENTRY.unpack_from(raw, i * E820_ENTRY.size) for i in range(len(raw) // E820_ENTRY.size)]
        finally:
            ctl.close()
            entries.close()


def no_privcmd_sentence(privcmd: Path, err: int | None) -> str:
    """What is missing when privcmd cannot be opened."""
    if err == errno.ENOENT:
        return (f"{privcmd} does not exist: this is not a Xen dom0, or the xen-privcmd module is not "
                "loaded (modprobe xen-privcmd)")
    if err in (errno.EACCES, errno.EPERM):
        return f"{privcmd} is not accessible: run pykexec as root in dom0"
    return f"{privcmd} cannot be opened, so Xen's kexec hypercall is out of reach"
