"""Real images that are not kernels for this machine, refused up front with what they are.

* PE images that are not kernels: Debian's shim, GRUB, systemd-boot,
  systemd-stub alone, the add-on stub, and iPXE's EFI builds (from before
  SBAT: named by their banner).  ``load --dry-run`` exits 2 with one line
  naming the kind, and the emulator never starts (it would print "running its
  EFI stub in the emulator").  Asked to run one anyway (``--via-emulator``),
  iPXE waits for the network: that is bad input too, exit 2, with what it
  printed.  Debian's kernels, PE images without SBAT or LoaderInfo, are still
  kernels.
* GRUB's core image and modules (ELF relocatable objects), OpenSBI's
  firmware ELF and OVMF's code (a UEFI firmware volume): named and refused.
* sid's kernels for riscv64, armhf and ppc64el: refused on this x86_64
  machine naming their architecture; on a machine of their own architecture
  no architecture mismatch is claimed (names normalised: riscv64 is riscv64,
  ppc64le is ppc64), and pykexec says it has no planner for them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pykexec.formats import pe

from .helpers import assert_clean_error, describe, inspect_json, material, run_cli
from .test_trust_real import _debian_file

pytestmark = pytest.mark.real

MACHINE = Path(__file__).parents[1] / "data" / "machines" / "qemu-pc-1g-debian6.1.iomem"
GRUB = "usr/lib/grub/x86_64-efi/"


def _stub(name: str) -> Path:
    return material.systemd_stub("sid", "x64", "linux").with_name(name)


@pytest.mark.parametrize("image, kind", [
    (lambda: _debian_file("shim-signed", "usr/lib/shim/shimx64.efi.signed"), "shim, a first-stage boot loader"),
    (lambda: _stub("systemd-bootx64.efi"), "systemd-boot, a boot manager"),
    (lambda: _stub("linuxx64.efi.stub"), "systemd-stub alone"),
    (lambda: _stub("addonx64.efi.stub"), "a UKI add-on"),
    (lambda: _debian_file("grub-efi-amd64-bin", GRUB + "monolithic/grubx64.efi"), "GRUB, a boot loader"),
    (lambda: _debian_file("ipxe", "boot/ipxe.efi"), "iPXE, a network boot loader"),
    (lambda: _debian_file("ipxe", "usr/lib/ipxe/snponly.efi"), "iPXE, a network boot loader"),
], ids=["shim", "systemd-boot", "systemd-stub", "addon-stub", "grub", "ipxe-efi", "ipxe-snponly"])
def test_a_non_kernel_pe_is_named_and_refused_without_emulation(image, kind):
    proc = run_cli("load", "--dry-run", "--machine", str(MACHINE), str(image()), timeout=60)
    assert_clean_error(proc)
    err = proc.stderr.decode()
    assert kind in err and "not a kernel" in err and "emulator" not in err


@pytest.mark.parametrize("kernel", ["bookworm_signed_bzimage", "sid_arm64_image"])
def test_debian_kernels_are_still_kernels(kernel):
    data = getattr(material, kernel)().read_bytes()
    assert pe.has_pe_header(data) and pe.not_a_kernel(data) is None


def test_ipxe_efi_run_in_the_emulator_is_bad_input_naming_what_it_printed():
    proc = run_cli("load", "--dry-run", "--via-emulator", "--machine", str(MACHINE),
                   str(_debian_file("ipxe", "boot/ipxe.efi")), timeout=120)
    assert_clean_error(proc)
    err = proc.stderr.decode()
    assert "halted" in err and "before any hand-over to a kernel" in err and "iPXE" in err, err


@pytest.mark.parametrize("member, kind", [
    (GRUB + "kernel.img", "ELF relocatable object (ET_REL)"),
    (GRUB + "linux.mod", "ELF relocatable object (ET_REL)"),
], ids=["grub-kernel.img", "grub-linux.mod"])
def test_grub_core_and_modules_are_relocatable_objects(member, kind):
    path = _debian_file("grub-efi-amd64-bin", member)
    for verb in (["load", "--dry-run"], ["plan", "--target", "linux-user"]):
        proc = run_cli(*verb, "--machine", str(MACHINE), str(path))
        assert_clean_error(proc)
        assert kind in proc.stderr.decode() and "not an executable kernel" in proc.stderr.decode()


def test_opensbi_firmware_elf_is_not_a_kernel(tmp_path):
    """Debian's OpenSBI fw_jump.elf: a riscv64 ET_EXEC with no Linux note, refused even on a riscv64
    machine, where the architecture would match."""
    path = _debian_file("opensbi", "usr/lib/riscv64-linux-gnu/opensbi/generic/fw_jump.elf")
    for machine in (MACHINE, _machine(tmp_path, "riscv64")):
        proc = run_cli("load", "--dry-run", "--machine", str(machine), str(path))
        assert_clean_error(proc)
        err = proc.stderr.decode()
        assert "EM_RISCV ELF executable" in err and "firmware or a bare-metal program" in err, err


def test_ovmf_code_is_a_firmware_volume():
    path = _debian_file("ovmf", "usr/share/OVMF/OVMF_CODE.fd")
    doc = inspect_json(path)
    assert [layer["format"] for layer in doc["layers"]] == ["uefi-fv"]
    proc = run_cli("load", "--dry-run", "--machine", str(MACHINE), str(path))
    assert_clean_error(proc)
    assert "UEFI firmware volume" in proc.stderr.decode()


# sid's kernel per Debian architecture: (the name the image's header gives, `uname -m` there)
FOREIGN = {"riscv64": ("riscv64", "riscv64"), "armhf": ("arm", "armv7l"), "ppc64el": ("ppc64", "ppc64le")}


def _machine(tmp_path: Path, uname: str) -> Path:
    """The QEMU PC's description (its /proc/iomem says no architecture) as a machine of ``uname``."""
    described = json.loads(run_cli("machine", "--json", "--machine", str(MACHINE)).stdout)
    described["arch"] = uname
    machine = tmp_path / f"{uname}.json"
    machine.write_text(json.dumps(described))
    return machine


#: sid's arm64 kernels too (the arm64 guest's), as a user of this x86_64 machine might try them
HERE_REFUSED = {**{a: (lambda a=a: material.foreign_kernel(a), arch) for a, (arch, _) in FOREIGN.items()},
                "arm64": (material.sid_arm64_image, "arm64"), "arm64-16k": (material.sid_arm64_16k_image, "arm64")}


@pytest.mark.parametrize("debian_arch", sorted(HERE_REFUSED))
def test_foreign_kernels_are_refused_here_naming_their_architecture(debian_arch, tmp_path):
    image, arch = HERE_REFUSED[debian_arch]
    path = image()
    assert inspect_json(path)["layers"][-1]["arch"] == arch
    here = _machine(tmp_path, "x86_64")
    for verb in (["load", "--dry-run"], ["plan", "--target", "linux-user"]):
        proc = run_cli(*verb, "--machine", str(here), str(path))
        assert_clean_error(proc)
        err = proc.stderr.decode()
        if debian_arch == "armhf":
            assert "32-bit ARM zImage, which pykexec does not load" in err and "emulator" not in err, err
        else:
            assert f"is for {arch}, but this machine is x86_64" in err, err


@pytest.mark.parametrize("debian_arch", ["riscv64", "ppc64el"])
def test_foreign_kernels_on_their_own_machine(debian_arch, tmp_path):
    path = material.foreign_kernel(debian_arch)
    machine = _machine(tmp_path, FOREIGN[debian_arch][1])
    proc = run_cli("plan", "--target", "linux-user", "--machine", str(machine), str(path))
    assert_clean_error(proc)
    assert "no linux-user planner for" in proc.stderr.decode() and "but this machine" not in proc.stderr.decode()
    proc = run_cli("load", "--dry-run", "--machine", str(machine), str(path))
    assert proc.returncode == 0, describe(proc)
    assert b"nothing predicted" in proc.stdout and b"only the kernel" in proc.stdout, describe(proc)

