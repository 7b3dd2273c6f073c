"""``kexec_file_load``: the kernel reads the kernel and initrd itself, through file descriptors.

A bzImage or plain Image goes to the kernel as the file descriptor it was
read from, so IMA appraisal sees the real file; anything pykexec prepared
(an unwrapped UKI, a decompressed zboot, joined initrds) goes through a
memfd.  Nothing is unloaded first: a failed load leaves the loaded kernel.
"""

from __future__ import annotations

import os

from ...plan.loadplan import FileLoad
from .signals import kernel_call
from .syscalls import (KEXEC_FILE_DEBUG, KEXEC_FILE_NO_INITRAMFS, KEXEC_FILE_ON_CRASH, Syscalls,
                       memfd)
from .policy import loaded_sentence


def flags(load: FileLoad) -> int:
    """The kexec_file_load flags this hand-off asks for."""
    out = (KEXEC_FILE_ON_CRASH if load.crash else 0) | (KEXEC_FILE_DEBUG if load.debug else 0)
    if load.initrd is None and load.initrd_fd is None:
        out |= KEXEC_FILE_NO_INITRAMFS
    return out


class FileBackend:
    """Executes a :class:`FileLoad` with ``kexec_file_load``."""

    call = "kexec_file_load"

    def __init__(self, syscalls: Syscalls) -> None:
        self.syscalls = syscalls

    def execute(self, load: FileLoad) -> int:
        wanted = flags(load)
        opened: list[int] = []
        try:
            kernel_fd = load.kernel_fd
            if kernel_fd is None:
                kernel_fd = memfd("pykexec-kernel", load.kernel)
                opened.append(kernel_fd)
            else:
                os.lseek(kernel_fd, 0, os.SEEK_SET)
            initrd_fd = load.initrd_fd if load.initrd_fd is not None else -1
            if load.initrd_fd is None and load.initrd is not None:
                initrd_fd = memfd("pykexec-initrd", load.initrd)
                opened.append(initrd_fd)
            elif initrd_fd >= 0:
                os.lseek(initrd_fd, 0, os.SEEK_SET)
            with kernel_call(loaded_sentence(load.crash)):
                self.syscalls.kexec_file_load(kernel_fd, initrd_fd, load.cmdline, wanted)
        finally:
            for fd in opened:
                os.close(fd)
        return wanted
