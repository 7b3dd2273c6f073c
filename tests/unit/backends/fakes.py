"""A recording fake of the kexec system calls, after STYLE point 7."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from pykexec.errors import SyscallError


@dataclass
class FakeSyscalls:
    """Records each call; ``fail`` maps a call name to the errno it should raise."""

    fail: dict[str, int] = field(default_factory=dict)
    calls: list[tuple] = field(default_factory=list)
    synced: bool = False

    def _maybe_fail(self, name: str) -> None:
        if name in self.fail:
            err = self.fail[name]
            raise SyscallError(name, err, os.strerror(err))

    def kexec_file_load(self, kernel_fd, initrd_fd, cmdline, flags):
        kernel = _read_fd(kernel_fd)
        initrd = _read_fd(initrd_fd)
        self.calls.append(("kexec_file_load", kernel, initrd, cmdline, flags))
        self._maybe_fail("kexec_file_load")

    def kexec_load(self, entry, segments, flags):
        self.calls.append(("kexec_load", entry, list(segments), flags))
        self._maybe_fail("kexec_load")

    def reboot_kexec(self):
        self.calls.append(("reboot",))
        self._maybe_fail("reboot")

    def sync(self):
        self.synced = True


def _read_fd(fd: int) -> bytes | None:
    if fd < 0:
        return None
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def open_fds() -> set[str]:
    """This process's open descriptors, after a garbage collection: objects that earlier tests
    left unreachable close theirs now, not in the middle of a leak check.  A check then asserts
    that no descriptor was added (``open_fds() <= before``): one that garbage closes meanwhile is
    no leak."""
    import gc
    gc.collect()
    return set(os.listdir("/proc/self/fd"))
