"""arm64 kexec_load with pykexec's own device tree and purgatory, in the arm64 guest.

Debian's arm64 kernels have no kexec_file_load, so every load here goes
through ``kexec_load`` and pykexec's arm64 builder (src/pykexec/boot/arm64.py).
Each scenario observes the second kernel (a busybox-only initramfs that
reports its command line, a token only that initrd carries, and its log):

1. the Image with an initrd and a command line, loaded with ``--mode auto``
   (kexec_file_load answers ENOSYS, pykexec falls back), on a CPU without
   RNDR (cortex-a57): the second kernel's log says "KASLR enabled" (it had a
   kaslr-seed) and its RNG was ready before /init (it had an rng-seed);
2. the same kernel as Image.gz and as EFI zboot (gzip, zstd): each unpacks
   to the Image's exact bytes, and the zstd zboot boots;
3. an aa64 UKI from sid's ukify and ``linuxaa64.efi.stub``, at ``--profile 1``
   with an add-on: the profile's and the add-on's command lines and the
   UKI's initrd reach the second kernel;
4. a segment changed after the purgatory's digests were taken: our purgatory
   names it on the PL011 that /chosen/stdout-path names and does not boot;
5. and 6. the ``kexec`` shim (``kexec -l`` then ``kexec -e``), with two failed
   loads in between (a corrupt Image.gz, an initrd over half of RAM) that
   leave the shim's load in place.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import json

import pytest

from tests.usermode_helpers import corrupted

from . import arm64
from . import harness as h

pytestmark = pytest.mark.vm

MEMORY = 1024                    # MiB
#: no RNDR: KASLR and the RNG depend on the seeds in the device tree
SEEDLESS_CPU = "cortex-a57"

STAGE2 = h.sh_script("""
mark cmdline "$(cat /proc/cmdline)"
if [ -f /vm/token ]; then mark token "$(cat /vm/token)"; else mark token "(no /vm/token)"; fi
mark kernel "$(uname -r)"
mark kaslr "$(dmesg | grep -o -m 1 'KASLR [a-z ]*')"
mark crng "$(dmesg | awk '/crng init done/ && !c {c = NR} /Run \\/init as init process/ && !r {r = NR} END {print (c && c < r) ? "before-init" : "after-init"}')"
""")


@pytest.fixture(scope="module")
def guest_kernel():
    """The Image the guest boots (sid's 7.x arm64), prepared once."""
    return arm64.prepare()["kernel"]


def _guest(name: str, tok: str):
    g = arm64.Guest(name)
    g.host_file("/vm/initrd", g.stage2_initrd(STAGE2, files={"/vm/token": tok + "\n"}))
    return g


def _expect_seeded(serial: h.Serial) -> None:
    if serial.value("kaslr") != "KASLR enabled":
        serial.fail(f"the second kernel says {serial.value('kaslr')!r}: no kaslr-seed reached it")
    if serial.value("crng") != "before-init":
        serial.fail("the second kernel's RNG was not ready before /init: no rng-seed reached it")


def _load_json(serial: h.Serial, name: str) -> dict:
    h.expect_ok(serial, name)
    return json.loads(serial.lines(name + ".out"))


def test_image_falls_back_to_kexec_load_and_boots_with_fresh_seeds(guest_kernel):
    marker, tok = h.token(), h.token()
    cmdline = f"console={arm64.CONSOLE} stage=2 marker={marker}"
    g = _guest("arm64-user-image", tok)
    g.stage(1, h.sh_script(f"""
mark kernel "$(uname -r)"
run load pykexec load {arm64.GUEST_IMAGE} --initrd /vm/initrd --command-line "{cmdline}" --json || exit 1
mark sysfs-loaded "$(cat /sys/kernel/kexec_loaded)"
run exec pykexec exec
mark exec-returned
"""))
    serial = g.boot(memory=MEMORY, cpu=SEEDLESS_CPU)
    report = _load_json(serial, "load")
    if report["attempts"] != ["kexec_file_load: ENOSYS", "kexec_load: ok"]:
        serial.fail(f"load --mode auto made the attempts {report['attempts']}, wanted kexec_file_load "
                    "refused with ENOSYS (no KEXEC_FILE in Debian's arm64 kernels), then kexec_load")
    tree = report["plan"]["device_tree"]
    if tree["source"] != "/sys/firmware/fdt" or not {"kaslr-seed", "rng-seed", "bootargs"} <= set(tree["set"]):
        serial.fail(f"the plan's device tree edits are {tree}")
    if serial.values("sysfs-loaded") != ["1"] or serial.has("exec-returned"):
        serial.fail("the load did not take, or `pykexec exec` returned")
    h.expect_stage2(serial, cmdline=cmdline, token_value=tok)
    _expect_seeded(serial)
    kernels = serial.values("kernel")
    if len(kernels) != 2 or kernels[0] != kernels[1]:
        serial.fail(f"expected the same kernel release in both stages, got {kernels}")


def test_image_gz_and_zboot_unpack_to_the_image_and_zboot_boots(guest_kernel):
    material = h.material
    marker, tok = h.token(), h.token()
    cmdline = f"console={arm64.CONSOLE} stage=2 marker={marker}"
    g = _guest("arm64-user-wrappers", tok)
    image = guest_kernel.read_bytes()
    gz = g.dir / "Image.gz"
    gz.write_bytes(gzip.compress(image, compresslevel=6, mtime=0))
    zboots = {c: material.arm64_zboot_debian(c, image=guest_kernel)[0] for c in ("gzip", "zstd")}
    g.embed("/vm/Image.gz", gz)
    for c, path in zboots.items():
        g.embed(f"/vm/zboot-{c}.efi", path)
    plans = "\n".join(f"run plan-{name} pykexec plan /vm/{name} --target linux-user --json"
                      for name in ("Image.gz", "zboot-gzip.efi", "zboot-zstd.efi"))
    g.stage(1, h.sh_script(f"""
{plans}
run load pykexec load --mode user /vm/zboot-zstd.efi --initrd /vm/initrd --command-line "{cmdline}" || exit 1
run exec pykexec exec
mark exec-returned
"""))
    serial = g.boot(memory=MEMORY, timeout=360)
    for name in ("Image.gz", "zboot-gzip.efi", "zboot-zstd.efi"):
        plan = _load_json(serial, f"plan-{name}")
        kernel = next(s for s in plan["segments"] if s["role"] == "kernel")
        # a segment's sha256 covers what lands: the bytes, zero-filled to memsz
        want = hashlib.sha256(image + bytes(int(kernel["memsz"], 16) - len(image))).hexdigest()
        if kernel["sha256"] != want or int(kernel["bufsz"], 16) != len(image):
            serial.fail(f"{name} unpacked to {kernel['bufsz']} bytes with sha256 {kernel['sha256']}, "
                        f"not the Image ({len(image):#x} bytes, {want})")
    h.expect_ok(serial, "load")
    h.expect_stage2(serial, cmdline=cmdline, token_value=tok)


def test_aa64_uki_profile_and_addon_reach_the_second_kernel(guest_kernel):
    material = h.material
    marker, tok, addon_tok = h.token(), h.token(), h.token()
    base = f"console={arm64.CONSOLE} stage=2 which=base marker={marker}"
    profile1 = f"console={arm64.CONSOLE} stage=2 which=one marker={marker}"
    addon_cmdline = f"addon={addon_tok}"
    try:
        stub = material.systemd_stub("sid", "aa64", "linux")
        addon_stub = material.systemd_stub("sid", "aa64", "addon")
    except Exception as e:
        raise h.VmError(f"sid's aa64 systemd stubs: {e}") from e
    g = arm64.Guest("arm64-user-uki")
    stage2 = g.stage2_initrd(STAGE2, files={"/vm/token": tok + "\n"})
    try:
        uki = material.build_uki(g.dir / "arm64.efi", linux=guest_kernel, stub=stub, cmdline=base,
                                 initrd=stage2, profiles=[{"cmdline": profile1}])
        addon = material.build_addon(g.dir / "extra.addon.efi", stub=addon_stub, cmdline=addon_cmdline)
    except Exception as e:
        raise h.VmError(f"cannot build the aa64 UKI or add-on with ukify: {e}") from e
    from .test_uki import uki_profile_cmdline
    want = uki_profile_cmdline(uki, 1)
    assert want == profile1, f"profile @1 of the UKI built has cmdline {want!r}"
    g.embed("/vm/arm64.efi", uki)
    g.embed("/vm/extra.addon.efi", addon)
    g.stage(1, h.sh_script("""
run load pykexec load --mode user /vm/arm64.efi --profile 1 --addon /vm/extra.addon.efi || exit 1
run exec pykexec exec
mark exec-returned
"""))
    serial = g.boot(memory=MEMORY, timeout=300)
    h.expect_ok(serial, "load")
    h.expect_stage2(serial, cmdline=f"{profile1} {addon_cmdline}", token_value=tok)


CORRUPT_STAGE1 = '''
from pykexec.api import prepare_file
from pykexec.backends.linux.syscalls import LinuxSyscalls
from pykexec.backends.linux.user import UserBackend
from pykexec.boot.arm64 import build_arm64_load
from pykexec.machine import snapshot
{corrupted}

ROLE, OFFSET, CMDLINE = {role!r}, {offset!r}, {cmdline!r}
with open("/vm/initrd", "rb") as f:
    initrd = f.read()
good = build_arm64_load(prepare_file({image!r}), initrd=initrd, cmdline=CMDLINE, crash=False,
                        machine=snapshot())
bad = corrupted(good, ROLE, OFFSET)
checked = [s.role for s in bad.plan.segments if s.role != "purgatory"]
seg = bad.segment(ROLE)
mark("corrupt", ROLE, "region=%02x" % checked.index(ROLE), "mem=%016x" % seg.mem,
     "changed=%d" % (bytes(seg.buf) != bytes(good.segment(ROLE).buf)))
UserBackend(LinuxSyscalls()).execute(bad)
mark("loaded", open("/sys/kernel/kexec_loaded").read().strip())
run("exec", "pykexec", "exec")
mark("exec-returned")
'''


def test_purgatory_reports_a_corrupted_segment_on_the_pl011(guest_kernel):
    marker, tok = h.token(), h.token()
    cmdline = f"console={arm64.CONSOLE} stage=2 marker={marker}"
    g = _guest("arm64-user-corrupt", tok)
    g.stage(1, arm64.py_script(CORRUPT_STAGE1.format(role="initrd", offset=-1, cmdline=cmdline,
                                                     image=arm64.GUEST_IMAGE,
                                                     corrupted=inspect.getsource(corrupted))))
    serial = g.boot(memory=MEMORY, until="pykexec purgatory: refusing to boot")
    words = serial.value("corrupt").split()
    if serial.value("loaded") != "1" or words[-1] != "changed=1":
        serial.fail(f"the corrupted load was not made or not loaded: {words}")
    region, mem = words[1].split("=")[1], words[2].split("=")[1]
    if f"marker={marker}" in serial.text or serial.has("cmdline") or serial.has("exec-returned"):
        serial.fail("the next kernel ran (or exec returned) although a segment was corrupted")
    text = serial.text.replace("\r", "")
    mismatch = [ln for ln in text.splitlines() if "pykexec purgatory: segment" in ln]
    want = f"pykexec purgatory: segment {region} [0x{mem}+"
    if len(mismatch) != 1 or want not in mismatch[0] or "SHA-256 mismatch" not in mismatch[0]:
        serial.fail(f"expected one purgatory line naming the initrd ({want}... SHA-256 mismatch), got {mismatch}")
    if "pykexec purgatory: verification failed" not in text:
        serial.fail("'verification failed' not on the console")


def test_kexec_shim_load_survives_failed_loads_and_boots(guest_kernel):
    marker, tok = h.token(), h.token()
    cmdline = f"console={arm64.CONSOLE} stage=2 marker={marker}"
    g = _guest("arm64-user-shim-atomic", tok)
    gz = gzip.compress(guest_kernel.read_bytes(), compresslevel=1, mtime=0)
    g.embed("/vm/corrupt.Image.gz", _write(g.dir / "corrupt.Image.gz", gz[:len(gz) // 2]))
    g.stage(1, h.sh_script(f"""
run load kexec -l {arm64.GUEST_IMAGE} --initrd /vm/initrd --append "{cmdline}" || exit 1
mark loaded "$(cat /sys/kernel/kexec_loaded)"
run corrupt pykexec load --mode user /vm/corrupt.Image.gz --initrd /vm/initrd --command-line wrong
truncate -s {MEMORY * 3 // 4}M /tmp/huge.initrd
run huge pykexec load --mode user {arm64.GUEST_IMAGE} --initrd /tmp/huge.initrd --command-line wrong
mark still-loaded "$(cat /sys/kernel/kexec_loaded)"
run exec kexec -e
mark exec-returned
"""))
    serial = g.boot(memory=MEMORY)
    h.expect_ok(serial, "load")
    for name, why in (("corrupt", "gzip"), ("huge", "half of RAM")):
        h.expect_usage_error(serial, name)
        if why not in serial.values(name + ".err")[0]:
            serial.fail(f"the {name} load failed without naming {why!r}:\n{serial.command(name)}")
    if serial.values("loaded") != ["1"] or serial.values("still-loaded") != ["1"]:
        serial.fail("the shim's load was not in place after the failed loads")
    h.expect_stage2(serial, cmdline=cmdline, token_value=tok)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path
