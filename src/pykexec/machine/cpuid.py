"""The arm64 CPU's translation granules, read from ``ID_AA64MMFR0_EL1`` in user space.

An arm64 kernel runs with 4K, 16K or 64K pages, and a CPU need not support
all three (the Image header says which one a kernel wants; booting.rst).
Linux lets user space read the ID registers: with ``HWCAP_CPUID`` in the
auxiliary vector, an ``mrs`` of an ID register at EL0 traps and the kernel
emulates it with the sanitised system-wide value
(Documentation/arch/arm64/cpu-feature-registers.rst).  Python cannot issue an
``mrs`` itself, so :func:`read_id_aa64mmfr0` maps two instructions
(``mrs x0, ID_AA64MMFR0_EL1; ret``) executable from a memfd (never writable
and executable at once) and calls them through ctypes.

ID_AA64MMFR0_EL1 (Arm ARM D23.2.75): TGran4 bits [31:28] (0b0000, 0b0001:
supported; 0b1111: not), TGran64 bits [27:24] (0b0000: supported; 0b1111:
not), TGran16 bits [23:20] (0b0000: not supported; 0b0001, 0b0010: supported).
"""

from __future__ import annotations

import os
import platform
import struct
from functools import lru_cache

#: the arm64 translation granules (page sizes)
GRANULES = (4096, 16384, 65536)
AT_HWCAP = 16
HWCAP_CPUID = 1 << 11
#: mrs x0, ID_AA64MMFR0_EL1 (op0 3, op1 0, CRn 0, CRm 7, op2 0); ret
READ_MMFR0 = struct.pack("<II", 0xD5380700, 0xD65F03C0)


def granules(mmfr0: int) -> tuple[int, ...]:
    """The page sizes a CPU with this ID_AA64MMFR0_EL1 value supports, ascending."""
    tgran4, tgran64, tgran16 = (mmfr0 >> 28) & 0xF, (mmfr0 >> 24) & 0xF, (mmfr0 >> 20) & 0xF
    supported = (tgran4 in (0, 1), tgran16 in (1, 2), tgran64 == 0)
    return tuple(size for size, ok in zip(GRANULES, supported) if ok)


def hwcap(auxv: bytes) -> int:
    """AT_HWCAP from the bytes of /proc/self/auxv (64-bit pairs of type and value), 0 if absent."""
    for at in range(0, len(auxv) - 15, 16):
        kind, value = struct.unpack_from("<QQ", auxv, at)
        if kind == AT_HWCAP:
            return value
    return 0


@lru_cache(maxsize=1)
def read_id_aa64mmfr0() -> int | None:
    """ID_AA64MMFR0_EL1 as the kernel reports it to user space; None off arm64 or without HWCAP_CPUID."""
    if platform.machine() != "aarch64":
        return None
    try:
        with open("/proc/self/auxv", "rb") as f:
            if not hwcap(f.read()) & HWCAP_CPUID:
                return None  # the mrs would be SIGILL, not emulated
        return _call(READ_MMFR0)
    except OSError:
        return None


def _call(code: bytes) -> int | None:
    import ctypes
    import mmap
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    fd = os.memfd_create("pykexec-cpuid", os.MFD_CLOEXEC)
    try:
        os.write(fd, code)
        addr = libc.mmap(None, len(code), mmap.PROT_READ | mmap.PROT_EXEC, mmap.MAP_PRIVATE, fd, 0)
    finally:
        os.close(fd)
    if addr in (None, ctypes.c_void_p(-1).value):
        return None  # e.g. noexec memfds (vm.memfd_noexec=2)
    try:
        return ctypes.CFUNCTYPE(ctypes.c_uint64)(addr)()
    finally:
        libc.munmap(addr, len(code))
