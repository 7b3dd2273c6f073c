"""Machines, firmware trees and images the boot/ tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from pykexec.boot import elfcore, purgatory
from pykexec.boot.firmware import Firmware
from pykexec.machine import Range, TypedRange, load
from pykexec.machine.model import Machine

DATA = Path(__file__).resolve().parents[2] / "data" / "machines"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def fixed_random(n: int) -> bytes:
    return bytes(range(n))


def qemu_pc() -> Machine:
    """QEMU pc, 1 GiB, Debian 6.1: the iomem the VM tests run on."""
    return load(DATA / "qemu-pc-1g-debian6.1.iomem")


def qemu_crash() -> Machine:
    """QEMU q35, 1 GiB, crashkernel=256M."""
    return load(DATA / "qemu-q35-1g-crashkernel256m-debian6.1.iomem")


def many_ranges(count: int, *, crash: Range | None = None) -> Machine:
    """``count`` System RAM ranges of 1 MiB with 4 KiB reserved gaps, from 1 MiB up."""
    memory = [TypedRange(0x1000, 0x9F000, "System RAM", 0), TypedRange(0xF0000, 0x10000, "Reserved", 0)]
    addr = MiB
    for _ in range(count):
        memory.append(TypedRange(addr, MiB, "System RAM", 0))
        memory.append(TypedRange(addr + MiB, 0x1000, "Reserved", 0))
        addr += MiB + 0x1000
    memory.append(TypedRange(addr, GiB, "System RAM", 0))     # room for a kernel
    if crash is not None:
        memory.append(TypedRange(crash.start, crash.size, "Crash kernel", 1))
    memory.sort(key=lambda r: (r.start, r.depth))
    return Machine(arch="x86_64", memory=tuple(memory), memory_source="iomem", crashk_res=crash,
                   mem_total=count * MiB + GiB, kernel_release="6.1.0", possible_cpus=4)


@pytest.fixture(scope="session")
def image() -> purgatory.Image:
    return purgatory.load()


@pytest.fixture
def no_firmware() -> Firmware:
    return Firmware.none()


@pytest.fixture
def sources() -> elfcore.CrashSources:
    return elfcore.synthetic_sources(2)
