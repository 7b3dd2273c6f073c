"""Scenario 2: a multi-profile UKI (sid's systemd-stub) with .ucode and an add-on.

The UKI carries the bookworm cloud kernel, a base .cmdline, .initrd (the
guest's own initramfs), .ucode (an uncompressed cpio) and two profiles with
their own .cmdline.  pykexec loads profile @1 plus an add-on (addon stub, with
its own .cmdline).  Stage 2 must see profile @1's command line (as the UKI
spec numbers .profile sections, computed here from the PE with pefile)
followed by the add-on's, and an initrd that is the ucode archive followed by .initrd: files
of both are present, and /vm/order (in both) holds the later one's value.
"""

from __future__ import annotations

import pytest

from . import harness as h

pytestmark = pytest.mark.vm


def _material(what, fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # material raises RuntimeError with the reason
        raise h.VmError(f"cannot get {what}: {e}") from e


def uki_profile_cmdline(path, index: int) -> str:
    """The .cmdline profile @index of a UKI would use, per the UKI spec (the oracle).

    Sections before the first .profile are the base; the Nth .profile section
    starts profile @N; a profile without its own .cmdline uses the base one.
    """
    import pefile

    pe = pefile.PE(str(path), fast_load=True)
    try:
        base: dict[str, bytes] = {}
        profiles: list[dict[str, bytes]] = []
        for sec in pe.sections:
            name = sec.Name.rstrip(b"\0").decode()
            data = sec.get_data()[: sec.Misc_VirtualSize]
            if name == ".profile":
                profiles.append({})
            (profiles[-1] if profiles else base)[name] = data
    finally:
        pe.close()
    if not profiles:
        profiles = [{}]
    chosen = profiles[index]
    raw = chosen.get(".cmdline", base.get(".cmdline", b""))
    return raw.rstrip(b"\0").decode().strip()


def test_uki_profile_addon_ucode(vm_material):
    material = h.material
    marker, ucode_tok, addon_tok = h.token(), h.token(), h.token()
    stub = _material("sid's linuxx64.efi.stub", material.systemd_stub, "sid", "x64", "linux")
    addon_stub = _material("sid's addonx64.efi.stub", material.systemd_stub, "sid", "x64", "addon")

    g = h.Guest("uki-profile-addon")
    g.file("/vm/order", "initrd\n")
    g.stage(1, h.sh_script("""
run load pykexec load /vm/test.efi --profile 1 --addon /vm/test.efi.extra.d/pykexec.addon.efi || exit 1
mark sysfs-loaded "$(cat /sys/kernel/kexec_loaded)"
run exec pykexec exec
mark exec-returned
"""))
    g.stage(2, h.sh_script("""
mark cmdline "$(cat /proc/cmdline)"
mark ucode-token "$(cat /kernel/x86/microcode/pykexec-ucode.token 2>/dev/null || echo MISSING)"
mark order "$(cat /vm/order)"
mark initrd-only "$(cat /vm/scenario/name)"
"""))
    inner = g.initrd()
    ucode = g.build_archive("ucode.cpio", {
        "/kernel/x86/microcode/pykexec-ucode.token": ucode_tok + "\n",
        "/vm/order": "ucode\n",
    }, compress=False)
    base = f"console=ttyS0 stage=2 which=base marker={marker}"
    pa = f"console=ttyS0 stage=2 which=A marker={marker}"
    pb = f"console=ttyS0 stage=2 which=B marker={marker}"
    addon_cmdline = f"addon={addon_tok}"
    try:
        uki = material.build_uki(g.dir / "test.efi", linux=g.kernel, stub=stub, cmdline=base,
                                 initrd=inner, ucode=ucode, profiles=[{"cmdline": pa}, {"cmdline": pb}])
        addon = material.build_addon(g.dir / "pykexec.addon.efi", stub=addon_stub, cmdline=addon_cmdline)
    except Exception as e:
        raise h.VmError(f"cannot build the UKI or add-on with ukify: {e}") from e
    # ukify may give the base its own .profile ("ID=main"), shifting the numbers:
    # ask the spec what @1 is, and make sure it is one of the profiles with a .cmdline
    want = uki_profile_cmdline(uki, 1)
    assert want in (pa, pb), f"profile @1 of the UKI built has cmdline {want!r}, not a test profile's"
    g.embed("/vm/test.efi", uki)
    g.embed("/vm/test.efi.extra.d/pykexec.addon.efi", addon)
    serial = g.boot(memory=1536, embed_initrd=False, timeout=300)

    h.expect_ok(serial, "load")
    h.expect_stage2(serial, cmdline=f"{want} {addon_cmdline}")
    if serial.value("ucode-token") != ucode_tok:
        serial.fail(f"the .ucode archive's file is missing in stage 2: {serial.value('ucode-token')!r}")
    if serial.value("order") != "initrd":
        serial.fail(f"/vm/order is {serial.value('order')!r}: .ucode must come before .initrd")
