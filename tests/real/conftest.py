"""Tests on real boot images (Debian kernels, systemd stubs, a real arm64 zboot build).

Every test here is marked ``real``.  The material comes from tests/material.py
(fetched once, cached under ~/.cache/pykexec-tests); when it cannot be had the
fixtures raise and the tests error out: they never skip.

The tests drive the CLI as a subprocess (``python -m pykexec ...``) and judge
its output against independent oracles: header bytes read here at the
boot-protocol offsets, pefile, the kernel's own scripts/extract-vmlinux, the
gzip/zstd tools, and the Image that the zboot build left beside vmlinuz.efi.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .helpers import material, newc_cpio

HERE = Path(__file__).resolve().parent


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "real: tests on real Debian images fetched and cached by tests/material.py"
    )


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.real)


# --------------------------------------------------------------------------
# material (session-scoped; errors, never skips, when it cannot be fetched)


@pytest.fixture(scope="session")
def bookworm_cloud():
    return material.bookworm_cloud_bzimage()


@pytest.fixture(scope="session")
def bookworm_signed():
    return material.bookworm_signed_bzimage()


@pytest.fixture(scope="session")
def sid_cloud():
    return material.sid_cloud_bzimage()


@pytest.fixture(scope="session")
def arm64_image():
    return material.arm64_image()


@pytest.fixture(scope="session")
def arm64_image_gz():
    return material.arm64_image_gz()


@pytest.fixture(scope="session")
def xen_gz():
    return material.xen_hypervisor_gz()


@pytest.fixture(scope="session")
def ipxe_lkrn():
    return material.ipxe_lkrn()


@pytest.fixture(scope="session")
def extract_vmlinux():
    """A callable: bzImage path -> bytes printed by the kernel's scripts/extract-vmlinux."""
    script = material.extract_vmlinux_script()
    for tool, pkg in (("readelf", "binutils"), ("unzstd", "zstd"), ("lz4", "lz4"), ("xz", "xz-utils")):
        if not _which(tool):
            _apt_install(pkg)

    def run(image: Path) -> bytes:
        proc = subprocess.run(["bash", os.fspath(script), os.fspath(image)], capture_output=True,
                              timeout=300)
        assert proc.returncode == 0 and proc.stdout[:4] == b"\x7fELF", (
            f"extract-vmlinux {image} failed ({proc.returncode}): {proc.stderr[-1000:]!r}")
        return proc.stdout

    return run


def _which(tool: str) -> bool:
    import shutil

    return shutil.which(tool) is not None


def _apt_install(pkg: str) -> None:
    proc = subprocess.run(["apt-get", "install", "-y", "-q", pkg], capture_output=True,
                          env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    if proc.returncode != 0:
        raise RuntimeError(f"test material unavailable: apt-get install {pkg} failed: "
                           f"{proc.stderr.decode(errors='replace')[-1000:]}")


@pytest.fixture(scope="session")
def zboot_builds():
    """{compression: (vmlinuz.efi, Image)} for the six zboot compressions."""
    return {c: material.arm64_zboot(c) for c in material.ZBOOT_COMPRESSIONS}


@pytest.fixture(scope="session")
def initrd_parts(tmp_path_factory):
    """Small cpio-like files for .ucode and .initrd (sizes multiples of 4, so that
    concatenation needs no padding)."""
    d = tmp_path_factory.mktemp("initrd-parts")
    ucode = d / "ucode.cpio"
    initrd = d / "initrd.cpio"
    ucode.write_bytes(newc_cpio({"kernel/x86/microcode/GenuineIntel.bin": os.urandom(3000)}))
    initrd.write_bytes(newc_cpio({"init": b"#!/bin/sh\necho hi\n", "blob": os.urandom(20000)}))
    return ucode, initrd
