"""A recording fake of Xen's kexec hypercalls that applies Xen's own load checks.

The checks are Xen's, in its order (xen/common/kexec.c ``kexec_load``,
xen/common/kimage.c ``kimage_crash_alloc`` and ``do_kimage_alloc``), and a
load goes into a spare slot that replaces the loaded image only when every
check passed (``kexec_swap_images``): what the tests check about refusals
and atomicity comes from Xen's behaviour, not from pykexec's validator.

``efi_types=True`` is XenServer's Xen (xenserver-next/xen 19b98a02d5): the
EFI load types 2 and 3, segments described by byte addresses (``kimage_alloc``
rounds each out to pages; there is no page check any more), and with
``lockdown=True`` every other type refused with EPERM before anything else
(56cf11184e).  Without it the fake is upstream Xen 4.17, which knows types 0
and 1 only.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from dataclasses import dataclass, field

from pykexec.backends.xen.hypercalls import (KEXEC_RANGE_MA_CPU, KEXEC_RANGE_MA_CRASH,
                                             KEXEC_RANGE_MA_VMCOREINFO, KEXEC_RANGE_MA_XEN,
                                             KEXEC_TYPE_CRASH, KEXEC_TYPE_CRASH_EFI, KEXEC_TYPE_DEFAULT,
                                             KEXEC_TYPE_DEFAULT_EFI)
from pykexec.errors import SyscallError

PAGE = 4096


def _fail(call: str, err: int):
    raise SyscallError(call, err, os.strerror(err))


@dataclass
class FakeXen:
    """Xen as dom0 sees it: a machine map, a crash area, CPU notes; what is loaded per type."""

    crash_area: tuple[int, int] = (0x40000000, 0x10000000)
    memory_map: list = field(default_factory=lambda: [(0, 0x9fc00, 1), (0x9fc00, 0x400, 2),
                                                      (0xf0000, 0x10000, 2), (0x100000, 0x7fee0000, 1),
                                                      (0x7ffe0000, 0x20000, 2)])
    cpus: int = 2
    fail: dict = field(default_factory=dict)
    efi_types: bool = False
    lockdown: bool = False
    calls: list = field(default_factory=list)
    loaded: dict = field(default_factory=dict)

    def _maybe_fail(self, name: str) -> None:
        if name in self.fail:
            _fail(name, self.fail[name])

    def kexec_load(self, kexec_type, entry_maddr, segments, arch=62):
        self.calls.append(("load", kexec_type, entry_maddr, list(segments), arch))
        self._maybe_fail("load")
        call = "KEXEC_CMD_kexec_load"
        efi = self.efi_types and kexec_type in (KEXEC_TYPE_DEFAULT_EFI, KEXEC_TYPE_CRASH_EFI)
        if self.lockdown and not efi:
            _fail(call, errno.EPERM)
        if len(segments) >= 16:
            _fail(call, errno.EINVAL)
        if self.efi_types:   # kimage_alloc: the page offset kept aside, each segment rounded out to pages
            segments = [dataclasses.replace(s, dest_maddr=s.dest_maddr // PAGE * PAGE,
                                            dest_size=-(-(s.dest_maddr + s.dest_size) // PAGE) * PAGE
                                            - s.dest_maddr // PAGE * PAGE) for s in segments]
        if kexec_type == KEXEC_TYPE_CRASH or (efi and kexec_type == KEXEC_TYPE_CRASH_EFI):
            start, size = self.crash_area
            if kexec_type == KEXEC_TYPE_CRASH and not start <= entry_maddr <= start + size:
                _fail(call, errno.EADDRNOTAVAIL)
            for s in segments:
                if s.buf is not None and (s.dest_maddr < start or s.dest_maddr + s.dest_size > start + size):
                    _fail(call, errno.EADDRNOTAVAIL)
        elif kexec_type != KEXEC_TYPE_DEFAULT and not efi:
            _fail(call, errno.EINVAL)
        for s in segments:
            if s.dest_maddr % PAGE or (s.dest_maddr + s.dest_size) % PAGE:
                _fail(call, errno.EADDRNOTAVAIL)
        for i, s in enumerate(segments):
            for p in segments[:i]:
                if s.dest_maddr + s.dest_size > p.dest_maddr and s.dest_maddr < p.dest_maddr + p.dest_size:
                    _fail(call, errno.EINVAL)
        for s in segments:
            if len(s.buf or b"") > s.dest_size:
                _fail(call, errno.EINVAL)
        # Xen keeps an EFI image in the slot of its base type (do_kimage_alloc's type)
        slot = {KEXEC_TYPE_DEFAULT_EFI: KEXEC_TYPE_DEFAULT, KEXEC_TYPE_CRASH_EFI: KEXEC_TYPE_CRASH}
        self.loaded[slot.get(kexec_type, kexec_type)] = (entry_maddr, list(segments))

    def kexec_unload(self, kexec_type):
        self.calls.append(("unload", kexec_type))
        self._maybe_fail("unload")
        self.loaded.pop(kexec_type, None)

    def kexec_status(self, kexec_type):
        self.calls.append(("status", kexec_type))
        self._maybe_fail("status")
        return kexec_type in self.loaded

    def kexec_get_range(self, range_, nr=0):
        self.calls.append(("range", range_, nr))
        self._maybe_fail("range")
        if range_ == KEXEC_RANGE_MA_CRASH:
            return self.crash_area
        if range_ == KEXEC_RANGE_MA_XEN:
            return (0x200000, 0x400000)
        if range_ == KEXEC_RANGE_MA_VMCOREINFO:
            return (0x7ff00000, 0x1000)
        if range_ == KEXEC_RANGE_MA_CPU:
            if nr >= self.cpus:
                _fail("KEXEC_CMD_kexec_get_range", errno.ERANGE)
            return (0x7ff10000 + nr * 0x1000, 0x2d0)
        _fail("KEXEC_CMD_kexec_get_range", errno.EINVAL)

    def kexec_exec(self, kexec_type):
        self.calls.append(("exec", kexec_type))
        self._maybe_fail("exec")
        if kexec_type not in self.loaded:
            _fail("KEXEC_CMD_kexec", errno.ENOENT)

    def machine_memory_map(self):
        self.calls.append(("memory_map",))
        self._maybe_fail("memory_map")
        return list(self.memory_map)
