"""`pykexec load --via-emulator`: the image's own EFI stub unpacks it, and that is loaded."""

from __future__ import annotations

import pytest

from pykexec import api
from pykexec.formats import arm64_image
from pykexec.machine.model import Machine
from tests import material
from tests.unit.backends.fakes import FakeSyscalls

pytestmark = pytest.mark.real


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
    differing = sum(a != b for a, b in zip(kernel, expected))
    assert differing <= 16, "only the stub's own variables may differ"
    assert cmdline == "console=ttyAMA0 marker=1"
    assert summary.kernel_source == "memfd (prepared)" and report.syscall == "kexec_file_load"
