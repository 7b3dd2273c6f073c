"""What a PE image is, decided from the PE alone (pe.not_a_kernel): the SBAT components, systemd's
LoaderInfo, or, for images older than SBAT, a banner in their sections; and which PEs `load`
hands to the emulator when no parser unwraps them.

The SBAT lines and the LoaderInfo string are written as the SBAT spec and systemd write them;
iPXE's banner is the line every iPXE build prints at start ("iPXE <version> -- Open Source
Network Boot Firmware -- http://ipxe.org")."""

from __future__ import annotations

import pytest

from pykexec import cli
from pykexec.formats import pe
from tests import builders as b

pytestmark = pytest.mark.usefixtures("frozen_gc")  # pefile gc.collect()s on every rejection

TEXT = (".text", b"\x55\x48\x89\xe5" + b"\xcc" * 60)
SBAT = b"sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\n"
IPXE_BANNER = b"iPXE 1.0.0+ -- Open Source Network Boot Firmware -- http://ipxe.org\0"


@pytest.mark.parametrize("sections, kind", [
    ([TEXT, (".sbat", SBAT + b"shim,3,UEFI shim,shim,1,https://github.com/rhboot/shim\n")],
     "shim, a first-stage boot loader"),
    ([TEXT, (".sbat", SBAT + b"grub,4,Free Software Foundation,grub,2.06,https://www.gnu.org/software/grub/\n")],
     "GRUB, a boot loader"),
    ([TEXT, (".sdmagic", b"#### LoaderInfo: systemd-addon 262.1-1 ####\0")], "a UKI add-on"),
    ([TEXT, (".rodata", b"\0" * 64 + IPXE_BANNER)], "iPXE, a network boot loader"),
], ids=["shim", "grub", "addon", "ipxe-banner"])
def test_what_the_pe_says_it_is(sections, kind):
    image = b.pe(sections)
    refusal = pe.not_a_kernel(image)
    name, data = sections[1]
    # the section that says so, at its file offset (the banner: where its words start inside it)
    at = image.index(b"Open Source Network Boot Firmware") if IPXE_BANNER in data else image.index(data)
    assert (refusal.field, refusal.offset) == (f"section {name}", at)
    assert refusal.reason.startswith(f"this is {kind}") and refusal.exit_code == 2


@pytest.mark.parametrize("sections, trailing", [
    ([TEXT, (".data", b"\0" * 64)], b""),                                       # says nothing
    ([TEXT, (".sbat", SBAT + b"shim,3,UEFI shim,shim,1,https://x\n"), (".linux", b"k" * 64)], b""),  # a UKI
    ([TEXT, (".data", b"\0" * 64)], IPXE_BANNER),                               # banner outside sections
], ids=["plain", "uki-with-linux", "banner-in-overlay"])
def test_what_may_be_a_kernel(sections, trailing):
    assert pe.not_a_kernel(b.pe(sections, trailing=trailing)) is None


def test_an_arm_zimage_efi_stub_is_not_emulated(capsys, tmp_path):
    # A PE32 for ARM (machine 0x1c2): the emulator runs x86_64 and arm64 PE32+ only, so load gives the
    # zImage parser's sentence instead of starting it.
    image = tmp_path / "zImage"
    image.write_bytes(b.arm_zimage(efi=True))
    rc = cli.main(["load", "--dry-run", str(image)])
    err = capsys.readouterr().err
    assert rc == 2 and "32-bit ARM zImage" in err and "emulator" not in err, err
