"""Kexec from Linux into Xen 4.17 (Multiboot 2, through kexec_load and pykexec's purgatory).

Stage 1 (bookworm's cloud kernel) runs::

    pykexec load --mode user xen-4.17-amd64.gz --command-line "console=com1 com1=115200,8n1 ..." \\
        --module "vmlinuz-generic,console=hvc0 earlyprintk=xen stage=2 ..." --module initrd.img

``xen-4.17-amd64.gz`` is a gzip'd ELF with a Multiboot 2 header (pykexec
unwraps it); dom0 is Debian's *generic* 6.1 kernel (the cloud one lacks
CONFIG_XEN_DOM0) with the guest's own initramfs plus a token, so dom0's /init
is the harness's and runs stage 2 there: it reports on hvc0, which Xen
forwards to COM1.  Xen under TCG needs ``-cpu max,-smap``.
"""

from __future__ import annotations

import pytest

from . import harness as h
from . import usermode_support as um

pytestmark = pytest.mark.vm

XEN_TIMEOUT = 240
XEN_MEMORY = 1536

STAGE2_DOM0 = h.sh_script("""
mark cmdline "$(cat /proc/cmdline)"
if [ -f /vm/token ]; then mark token "$(cat /vm/token)"; else mark token "(no /vm/token)"; fi
mark kernel "$(uname -r)"
mark hypervisor "$(cat /sys/hypervisor/type 2>/dev/null || echo none)"
# dom0's domain handle is all zeros (xenfs, with /proc/xen/capabilities, is a module here)
mark xen-uuid "$(cat /sys/hypervisor/uuid 2>/dev/null || echo none)"
mark pv-banner "$(dmesg | grep -c 'Booting kernel on Xen$')"
mark xen-version "$(cat /sys/hypervisor/version/major 2>/dev/null).$(cat /sys/hypervisor/version/minor 2>/dev/null)"
""")


def test_kexec_into_xen_dom0(vm_material):
    xen = um.xen_gz()
    dom0 = um.generic_kernel()
    marker, tok = h.token(), h.token()
    xen_cmdline = "console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all dom0_max_vcpus=1"
    dom0_cmdline = f"console=hvc0 earlyprintk=xen panic=-1 stage=2 marker={marker}"
    g = h.Guest("xen-dom0")
    g.embed("/vm/xen.gz", xen)
    g.embed("/vm/vmlinuz-generic", dom0)
    h.add_token_archive(g, tok)
    g.stage(1, h.sh_script(f"""
cat /vm/initrd.img /vm/token.cpio > /tmp/dom0.img
run load pykexec load --mode user /vm/xen.gz --command-line "{xen_cmdline}" \\
    --module "/vm/vmlinuz-generic,{dom0_cmdline}" --module /tmp/dom0.img || exit 1
mark sysfs-loaded "$(cat /sys/kernel/kexec_loaded)"
run exec pykexec exec
mark exec-returned
"""))
    g.stage(2, STAGE2_DOM0)
    with um.qemu_cpu(um.XEN_CPU):
        serial = g.boot(memory=XEN_MEMORY, timeout=XEN_TIMEOUT)

    h.expect_ok(serial, "load")
    out = serial.lines("load.out")
    if "loaded with kexec_load" not in out or ("multiboot2" not in out.lower() and "mbi" not in out):
        serial.fail(f"expected a Multiboot 2 load through kexec_load:\n{serial.command('load')}")
    if serial.value("sysfs-loaded") != "1":
        serial.fail("/sys/kernel/kexec_loaded is not 1 after loading Xen")
    text = serial.text.replace("\r", "")
    for needle in ("(XEN) Xen version 4.17", "(XEN) Bootloader: kexec", "(XEN) *** Building a PV Dom0 ***"):
        if needle not in text:
            serial.fail(f"{needle!r} is not on the console: Xen did not start (or start dom0)")
    # Xen's cmdline_cook strips the image name pykexec puts first (the loader is not GRUB 2)
    if f"(XEN) Command line: {xen_cmdline}\n" not in text:
        serial.fail(f"Xen did not get the command line {xen_cmdline!r}")
    serial.expect_in_order("stage-begin 1", "sysfs-loaded", "stage-begin 2", "stage-end 2 rc=0")
    cmdline = serial.value("cmdline").strip()
    if cmdline.split() != dom0_cmdline.split():
        serial.fail(f"dom0 /proc/cmdline is {cmdline!r}, expected {dom0_cmdline!r}")
    if serial.value("token").strip() != tok:
        serial.fail(f"dom0 has not the module initrd: token {serial.value('token')!r}, expected {tok!r}")
    kernel = serial.value("kernel")
    if kernel.endswith("-cloud-amd64") or not kernel.endswith("-amd64"):
        serial.fail(f"dom0 runs {kernel!r}, not the generic amd64 kernel")
    if serial.value("hypervisor").strip() != "xen":
        serial.fail(f"/sys/hypervisor/type in dom0 is {serial.value('hypervisor')!r}, not xen")
    if serial.value("pv-banner") != "1":
        serial.fail("dom0's kernel log lacks 'Booting kernel on Xen' (a PV kernel)")
    if serial.value("xen-uuid").strip() != "00000000-0000-0000-0000-000000000000":
        serial.fail(f"/sys/hypervisor/uuid is {serial.value('xen-uuid')!r}: not dom0's null handle")
    if serial.value("xen-version").strip() != "4.17":
        serial.fail(f"the hypervisor reports version {serial.value('xen-version')!r}, not 4.17")
