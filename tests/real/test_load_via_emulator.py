"""`pykexec load --via-emulator`: the image's own EFI stub unpacks it, and that is loaded.

The loader's emulation stops at the entry of the nested kernel's own EFI stub
(``efi.emulate_for_load``): for a UKI that is where systemd-stub hands over
``.linux`` (252: StartImage of the image it LoadImage'd; 262 with Secure Boot
off: a call into the kernel it laid out itself), with the command line in
LoadOptions and the initrd behind its LoadFile2.  The oracle for what must be
loaded is the UKI's own sections, read with pefile.
"""

from __future__ import annotations

import time

import pefile
import pytest

from pykexec import api, efi
from pykexec.formats import arm64_image
from pykexec.machine.model import Machine
from tests import material
from tests.unit.backends.fakes import FakeSyscalls

pytestmark = pytest.mark.real

INITRD = b"070701" + b"pykexec-uki-initrd " * 5000
CMDLINE = "console=ttyS0 uki-via-emulator-marker"
#: what systemd-stub does before it starts .linux: far below what the kernel's stub runs
STUB_INSTRUCTIONS = 20_000_000


def _sections(path) -> dict[str, bytes]:
    """Each section's contents (VirtualSize long, as the UKI specification says)."""
    pe = pefile.PE(str(path), fast_load=True)
    try:
        return {s.Name.rstrip(b"\0").decode(): s.get_data()[:s.Misc_VirtualSize]
                for s in pe.sections}
    finally:
        pe.close()


@pytest.fixture(scope="module", params=["bookworm", "sid"])
def uki(request, tmp_path_factory):
    suite = request.param
    tmp = tmp_path_factory.mktemp(suite)
    (tmp / "initrd").write_bytes(INITRD)
    path = material.build_uki(tmp / f"{suite}.efi", linux=material.bookworm_cloud_bzimage(),
                              stub=material.systemd_stub(suite, "x64", "linux"),
                              cmdline=CMDLINE, initrd=tmp / "initrd")
    return suite, path


def test_uki_through_the_emulator_loads_linux_cmdline_initrd(uki, tmp_path):
    suite, path = uki
    sections = _sections(path)
    assert sections[".cmdline"].decode() == CMDLINE and sections[".initrd"] == INITRD
    sysfs = tmp_path / "sys"
    (sysfs / "kernel").mkdir(parents=True)
    fake = FakeSyscalls()
    summary, report, _ = api.load(api.LoadOptions(image=path, via_emulator=True),
                                  syscalls=fake, sysfs=sysfs, machine=Machine(arch="x86_64"),
                                  efivars=tmp_path / "none")
    (call, kernel, initrd, cmdline, _), = fake.calls
    assert call == "kexec_file_load"
    assert kernel == sections[".linux"]
    assert cmdline == CMDLINE
    assert initrd.startswith(INITRD)
    assert summary.layers == ("emulator", "bzimage")


def test_uki_capture_stops_at_the_kernels_stub(uki):
    suite, path = uki
    data = path.read_bytes()
    t0 = time.monotonic()
    cap = efi.emulate_for_load(data, initrd=None, cmdline=None, arch="x86_64")
    seconds = time.monotonic() - t0
    sections = _sections(path)
    r = cap.report
    assert r["stopped_at"] == "kernel-stub"
    assert cap.kernel == sections[".linux"] == cap.loadable
    assert cap.cmdline == CMDLINE and cap.initrd.startswith(INITRD)
    assert r["initrd_source"].startswith("the guest's LoadFile2")     # systemd-stub's own
    if suite == "bookworm":     # 252: LoadImage(.linux) + StartImage
        assert r["kernel_stub"]["origin"].startswith("LoadImage of VenMedia(")
        assert "StartImage of" in r["handover"]
    else:                       # 262, Secure Boot off: it lays .linux out and calls it
        assert r["kernel_stub"]["origin"] == "section .linux"
        assert "laid out" in r["handover"]
    # the kernel's stub (which decompresses the kernel: ~100 M instructions) never ran
    assert r["instructions"] < STUB_INSTRUCTIONS and "BS.ExitBootServices" not in r["calls"]
    print(f"{suite}: emulate_for_load {seconds:.2f} s, {r['instructions']} instructions")


@pytest.mark.parametrize("suite", ["bookworm", "sid"])
def test_arm64_uki_through_the_emulator_loads_the_image(suite, tmp_path):
    """The same on arm64, around bookworm's arm64 Image (whose own stub, run on to the
    hand-over, faults under the emulator after ExitBootServices: the early capture never
    runs it).  262 lays the Image out at a SectionAlignment (64 KiB) boundary."""
    (tmp_path / "initrd").write_bytes(INITRD)
    image = material.arm64_image()
    path = material.build_uki(tmp_path / f"{suite}.efi", linux=image,
                              stub=material.systemd_stub(suite, "aa64", "linux"),
                              cmdline="console=ttyAMA0 arm64-uki-marker",
                              initrd=tmp_path / "initrd")
    cap = efi.emulate_for_load(path.read_bytes(), initrd=None, cmdline=None, arch="arm64")
    assert cap.report["stopped_at"] == "kernel-stub"
    assert cap.kernel == _sections(path)[".linux"] == image.read_bytes()
    assert cap.cmdline == "console=ttyAMA0 arm64-uki-marker" and cap.initrd.startswith(INITRD)
    assert arm64_image.probe(cap.loadable)


def test_zboot_through_the_emulator_loads_the_image_its_stub_unpacked(tmp_path):
    vmlinuz_efi, image = material.arm64_zboot("gzip")
    sysfs = tmp_path / "sys"
    (sysfs / "kernel").mkdir(parents=True)
    fake = FakeSyscalls()
    summary, report, _ = api.load(
        api.LoadOptions(image=vmlinuz_efi, command_line="console=ttyAMA0 marker=1",
                        via_emulator=True),
        syscalls=fake, sysfs=sysfs, machine=Machine(arch="arm64"), efivars=tmp_path / "none")
    (_, kernel, _, cmdline, _), = fake.calls
    expected = image.read_bytes()
    assert arm64_image.probe(kernel) and len(kernel) == len(expected)
    # captured where the zboot stub starts its Image: before the Image's stub stores
    # its own variables, so the bytes are the build's Image exactly
    assert kernel == expected
    assert cmdline == "console=ttyAMA0 marker=1"
    assert summary.kernel_source == "memfd (prepared)" and report.syscall == "kexec_file_load"
    assert summary.layers[0] == "emulator"
