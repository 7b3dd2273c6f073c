"""The planner on Debian's real bookworm cloud kernel, against what Debian 6.1 did under QEMU.

Marked ``real``: the image comes from tests/material.py (fetched and cached;
a missing image fails the test).  The purgatory and boot_params addresses do
not depend on the kernel build; the kernel's and initrd's follow from its
init_size exactly as the log of 6.1.0-56 shows.  The log's own numbers are
pinned only for the build the log was taken with, recognised by its package
version: Debian replaces the cloud kernel, and another build with the same
init_size has another size.
"""

from __future__ import annotations

import pytest

from pykexec.api import prepare_file
from pykexec.machine.ranges import align_down, align_up
from pykexec.plan import plan

from .conftest import qemu_machine

pytestmark = pytest.mark.real

#: the package whose kernel tests/data/machines/qemu-pc-1g-debian6.1.kexec-file.log was taken with
LOGGED_BUILD = ("linux-image-6.1.0-56-cloud-amd64", "6.1.192-2", "amd64")


def test_debian_cloud_kernel_on_qemu_pc():
    from tests import material

    prepared = prepare_file(material.bookworm_cloud_bzimage())
    layer = prepared.kernel_layer
    machine = qemu_machine("qemu-pc-1g-debian6.1.iomem", possible_cpus=1)
    p = plan(prepared, machine=machine, initrd=bytes(3000000), cmdline="console=ttyS0 marker=normal")
    purgatory, params, kernel, initrd = p.segments
    assert (purgatory.mem, purgatory.memsz, params.mem, params.bufsz) == (0x9A000, 0x5000, 0x98000, 0x10E0)
    memsz = align_up(layer.init_size, 4096)
    assert kernel.memsz == memsz and kernel.bufsz == len(prepared.kernel) - layer.setup_size
    assert kernel.mem == align_down(0x3FFDFFFF - memsz, layer.kernel_alignment)
    assert initrd.mem == kernel.mem - 0x2DD000
    if material.package_of(material.bookworm_cloud_bzimage()) == LOGGED_BUILD:
        assert kernel.mem == 0x3CC00000 and kernel.bufsz == 0xD827C0 and initrd.mem == 0x3C923000
    assert p.validate() == ()
