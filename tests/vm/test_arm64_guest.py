"""The arm64 guest (tests/vm/arm64.py): Debian's 7.x arm64 kernel under qemu-system-aarch64.

Two baselines for the arm64 user-mode kexec scenarios that follow:

* pykexec runs on Debian's arm64 Python 3.13 and its python3-* packages:
  ``inspect``, ``machine`` and ``plan`` succeed, and what they say matches
  the guest (architecture, the RAM QEMU was given, the Image's bytes);
* Debian's own kexec-tools (``kexec -l`` + ``kexec -e``, i.e. ``kexec_load``:
  the kernel has no ``KEXEC_FILE``) boots a second kernel in this guest,
  which reports the command line it was given and a token that only its
  initrd carries.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from . import arm64
from . import harness as h

pytestmark = pytest.mark.vm

MEMORY = 1024  # MiB, the guest's -m


@pytest.fixture(scope="session")
def arm64_material() -> dict:
    """qemu-system-aarch64, the kernel and the cached arm64 layers, built once per session."""
    return arm64.prepare()


def _json(serial: h.Serial, name: str) -> dict:
    h.expect_ok(serial, name)
    text = serial.lines(name + ".out")
    try:
        return json.loads(text)
    except ValueError:
        serial.fail(f"`{name}` printed no JSON:\n{serial.command(name)}")
        raise


def _system_ram(ranges) -> int:
    """Bytes of top-level System RAM in ``[(start, size, type, depth)]``."""
    return sum(size for _start, size, kind, depth in ranges if kind == "System RAM" and depth == 0)


def _iomem(lines: str) -> list:
    """/proc/iomem text -> [(start, size, type, depth)]."""
    out = []
    for line in lines.splitlines():
        body = line.lstrip(" ")
        depth = (len(line) - len(body)) // 2
        span, _, kind = body.partition(" : ")
        lo, _, hi = span.partition("-")
        start, end = int(lo, 16), int(hi, 16)
        out.append((start, end - start + 1, kind.strip(), depth))
    return out


def test_pykexec_runs_on_arm64_python(arm64_material):
    """inspect / machine / plan under the guest's Python 3.13, checked against the guest."""
    image = arm64_material["kernel"]
    g = arm64.Guest("arm64-pykexec-python")
    g.stage(1, h.sh_script(f"""
mark uname-m "$(uname -m)"
mark python "$(python3 -c 'import sys; print(sys.version.split()[0], sys.implementation.cache_tag)')"
run imports python3 -c 'import zstandard, lz4.frame, lzo, pefile, elftools, libfdt, cryptography.hazmat.primitives.hashes; import pykexec; print(pykexec.__file__)'
run inspect python3 -m pykexec inspect {arm64.GUEST_IMAGE} --json
run machine pykexec machine --json
run plan pykexec plan {arm64.GUEST_IMAGE} --target linux-file --json
show iomem /proc/iomem
mark fdt "$(ls /sys/firmware/fdt 2>&1)"
"""))
    serial = g.boot(memory=MEMORY)
    serial.expect_in_order("stage-begin 1", "stage-end 1 rc=0")
    if serial.value("uname-m") != "aarch64":
        serial.fail(f"the guest is {serial.value('uname-m')!r}, not aarch64")
    if not serial.value("python").startswith("3.13.") or not serial.value("python").endswith("cpython-313"):
        serial.fail(f"the guest's python3 is {serial.value('python')!r}, not Debian's 3.13")
    h.expect_ok(serial, "imports")
    if serial.lines("imports.out") != f"{arm64.GUEST_PYKEXEC_SITE}/pykexec/__init__.py":
        serial.fail(f"pykexec imported from elsewhere:\n{serial.command('imports')}")

    # inspect: the guest read the same bytes and recognised Debian's arm64 Image
    report = _json(serial, "inspect")
    formats = [layer.get("format") for layer in report.get("layers", [])]
    if "arm64-image" not in formats:
        serial.fail(f"inspect names no arm64-image layer: {formats}")
    if report.get("sha256") != hashlib.sha256(image.read_bytes()).hexdigest():
        serial.fail(f"inspect's sha256 {report.get('sha256')} is not the booted Image's")
    if report.get("size") != image.stat().st_size:
        serial.fail(f"inspect's size {report.get('size')} is not {image.stat().st_size}")

    # machine: arm64, and the RAM QEMU gave the guest, as the guest's own /proc/iomem has it
    machine = _json(serial, "machine")
    if machine.get("arch") != "arm64":
        serial.fail(f"pykexec machine says arch {machine.get('arch')!r}, not arm64")
    ram = _system_ram((int(r["start"], 16), int(r["size"], 16), r["type"], r.get("depth", 0))
                      for r in machine.get("memory", []))
    guest_ram = _system_ram(_iomem(serial.lines("iomem")))
    if ram != guest_ram:
        serial.fail(f"pykexec machine's System RAM is {ram:#x}, the guest's /proc/iomem {guest_ram:#x}")
    if ram != MEMORY << 20:
        serial.fail(f"pykexec machine's System RAM is {ram:#x}, but QEMU ran with -m {MEMORY} "
                    f"({MEMORY << 20:#x})")

    # plan: a kexec_file_load plan of the same Image (no KEXEC_FILE here: planning only),
    # placed in this guest's RAM as the arm64 boot protocol wants it
    plan = _json(serial, "plan")
    if plan.get("target") != "linux-file" or plan.get("violations"):
        serial.fail(f"pykexec plan: target {plan.get('target')!r}, violations {plan.get('violations')}")
    segs = {s["role"]: s for s in plan.get("segments", [])}
    if set(segs) < {"kernel", "dtb"}:
        serial.fail(f"pykexec plan has segments {sorted(segs)}, wanted a kernel and a dtb")
    ram = [(start, start + size) for start, size, kind, depth in _iomem(serial.lines("iomem"))
           if kind == "System RAM" and depth == 0]
    for role, seg in segs.items():
        lo, hi = int(seg["mem"], 16), int(seg["mem"], 16) + int(seg["memsz"], 16)
        if not any(a <= lo and hi <= b for a, b in ram):
            serial.fail(f"the {role} segment {lo:#x}-{hi:#x} is outside the guest's System RAM {ram}")
    kseg = segs["kernel"]
    image_size = next(layer["image_size"] for layer in report["layers"] if layer["format"] == "arm64-image")
    if int(kseg["mem"], 16) % (2 << 20) or int(kseg["memsz"], 16) < image_size \
            or int(kseg["bufsz"], 16) != image.stat().st_size or plan.get("entry") != kseg["mem"]:
        serial.fail(f"kernel segment {kseg} (entry {plan.get('entry')}): wanted a 2 MiB aligned start, "
                    f"memsz >= image_size {image_size:#x}, bufsz = the Image's size, entry = its start")


def test_kexec_tools_baseline(arm64_material):
    """Debian's kexec-tools:arm64 (kexec_load) boots the same Image with a new initrd."""
    marker, tok = h.token(), h.token()
    cmdline = f"console={arm64.CONSOLE} stage=2 marker={marker}"
    g = arm64.Guest("arm64-kexec-tools-baseline")
    stage2 = g.stage2_initrd(h.STAGE2_REPORT, files={"/vm/token": tok + "\n"})
    g.host_file("/vm/initrd", stage2)
    kexec = arm64.GUEST_KEXEC_TOOLS
    g.stage(1, h.sh_script(f"""
mark kexec-tools "$({kexec} --version 2>&1)"
mark kernel "$(uname -r)"
if [ -f /vm/token ]; then mark stage1-token "$(cat /vm/token)"; fi
run load {kexec} -l {arm64.GUEST_IMAGE} --initrd /vm/initrd --append "{cmdline}" || exit 1
mark sysfs-loaded "$(cat /sys/kernel/kexec_loaded)"
run exec {kexec} -e
mark exec-returned
"""))
    serial = g.boot(memory=MEMORY)
    h.expect_ok(serial, "load")
    if serial.has("stage1-token"):
        serial.fail("stage 1 has /vm/token: the token would not prove the second kernel's initrd")
    if serial.values("sysfs-loaded") != ["1"]:
        serial.fail("/sys/kernel/kexec_loaded is not 1 after `kexec -l`")
    if serial.has("exec-returned"):
        serial.fail(f"`kexec -e` returned:\n{serial.command('exec')}")
    h.expect_stage2(serial, cmdline=cmdline, token_value=tok)
    kernels = serial.values("kernel")
    if len(kernels) != 2 or kernels[0] != kernels[1]:
        serial.fail(f"expected the same kernel release in both stages, got {kernels}")
