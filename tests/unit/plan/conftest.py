"""Machines and images for the planner tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from pykexec.formats import arm64_image, bzimage
from pykexec.machine import Machine, Range, TypedRange, load
from tests import builders

DATA = Path(__file__).resolve().parents[2] / "data" / "machines"
MiB, GiB = 1 << 20, 1 << 30


def debian61_bzimage(**fields):
    """A bzImage with the header of Debian's linux-image-6.1.0-56-cloud-amd64 (6.1.192-2)."""
    values = dict(version=0x20F, setup_sects=39, init_size=0x3378000, kernel_alignment=0x200000,
                  pref_address=0x1000000, cmdline_size=2047, xloadflags=0x7F, loadflags=0x81,
                  initrd_addr_max=0x7FFFFFFF)
    values.update(fields)
    return bzimage.parse(builders.bzimage(**values))


def qemu_machine(name: str, **changes) -> Machine:
    m = load(DATA / name)
    return m.with_changes(arch="x86_64", kernel_release="6.1.0-56-cloud-amd64", **changes)


@pytest.fixture
def bz():
    return debian61_bzimage()


@pytest.fixture
def pc_1g():
    return qemu_machine("qemu-pc-1g-debian6.1.iomem", possible_cpus=1)


@pytest.fixture
def q35_crash():
    return qemu_machine("qemu-q35-1g-crashkernel256m-debian6.1.iomem", possible_cpus=2)


def simple_machine(*ram: Range, arch="x86_64", release="6.12.0", **changes) -> Machine:
    return Machine(arch=arch, kernel_release=release, memory_source="iomem",
                   memory=tuple(TypedRange(r.start, r.size, "System RAM") for r in ram), **changes)


def arm64(image_size=0x2000000, text_offset=0, flags=0x0A):
    return arm64_image.parse(builders.arm64_image(image_size=image_size, text_offset=text_offset, flags=flags))
