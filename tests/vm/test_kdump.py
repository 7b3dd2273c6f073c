"""Scenario 3: kdump.  A crash kernel loaded with ``pykexec load --crash`` must
boot on a panic and find a 4 MiB pattern, held in memory by a process of the
crashed kernel, in /proc/vmcore.

The pattern is 1024 pages, each one unique (a magic, the seed and the page
index, then SHAKE-256 bytes), in an anonymous mmap (page aligned), so each
page can be looked for on its own: user pages are not physically contiguous.
"""

from __future__ import annotations

import pytest

from . import harness as h
from .kdump_pattern import expect_dump, kdump_guest

pytestmark = pytest.mark.vm

# the capture kernel unpacks the full guest initramfs (~100 MB) into its own memory
CRASHKERNEL = "512M"
MEMORY = 1280


def test_kdump_vmcore_holds_pattern(vm_material):
    marker, seed = h.token(), h.token()
    capture_cmdline = f"console=ttyS0 stage=2 marker={marker} panic=-1 irqpoll nr_cpus=1 reset_devices"
    g = kdump_guest("kdump", seed, "", capture_cmdline)
    serial = g.boot(f"crashkernel={CRASHKERNEL}", memory=MEMORY, timeout=300)

    h.expect_ok(serial, "load")
    if serial.value("crash-loaded") != "1":
        serial.fail("/sys/kernel/kexec_crash_loaded is not 1 after `pykexec load --crash`")
    expect_dump(serial, capture_cmdline, "kexec_file_load")
