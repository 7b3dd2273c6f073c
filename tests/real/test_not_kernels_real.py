"""PE images that are not kernels, refused up front with what they are (never run in the emulator).

Debian's shim, systemd-boot, systemd-stub alone and the add-on stub: ``load
--dry-run`` exits 2 with one line naming the kind, and the emulator never
starts (it would print "running its EFI stub in the emulator").  Debian's
kernels, PE images without SBAT or LoaderInfo, are still kernels.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pykexec.formats import pe

from .helpers import assert_clean_error, material, run_cli
from .test_trust_real import _debian_file

pytestmark = pytest.mark.real

MACHINE = Path(__file__).parents[1] / "data" / "machines" / "qemu-pc-1g-debian6.1.iomem"


def _stub(name: str) -> Path:
    return material.systemd_stub("sid", "x64", "linux").with_name(name)


@pytest.mark.parametrize("image, kind", [
    (lambda: _debian_file("shim-signed", "usr/lib/shim/shimx64.efi.signed"), "shim, a first-stage boot loader"),
    (lambda: _stub("systemd-bootx64.efi"), "systemd-boot, a boot manager"),
    (lambda: _stub("linuxx64.efi.stub"), "systemd-stub alone"),
    (lambda: _stub("addonx64.efi.stub"), "a UKI add-on"),
], ids=["shim", "systemd-boot", "systemd-stub", "addon-stub"])
def test_a_non_kernel_pe_is_named_and_refused_without_emulation(image, kind):
    proc = run_cli("load", "--dry-run", "--machine", str(MACHINE), str(image()), timeout=60)
    assert_clean_error(proc)
    err = proc.stderr.decode()
    assert kind in err and "not a kernel" in err and "emulator" not in err


@pytest.mark.parametrize("kernel", ["bookworm_signed_bzimage", "sid_arm64_image"])
def test_debian_kernels_are_still_kernels(kernel):
    data = getattr(material, kernel)().read_bytes()
    assert pe.has_pe_header(data) and pe.not_a_kernel(data) is None
