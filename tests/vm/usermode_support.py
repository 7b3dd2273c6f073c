"""Helpers for the user-mode (kexec_load) VM scenarios and their benchmark.

Beyond tests/vm/harness.py this provides:

* material: Debian's *generic* ``linux-image-6.1.0-N-amd64`` bzImage (the
  only bookworm kernel with ``CONFIG_XEN_DOM0``; the cloud kernel lacks it),
  Xen 4.17's ``xen-4.17-amd64.gz``, and the vmlinux ELF that ``pykexec
  extract`` pulls out of a bzImage (run on the host);
* :func:`qemu_cpu`: boot with another QEMU ``-cpu`` (Xen under TCG needs
  ``max,-smap``), through the harness's ``PYKEXEC_VM_CPU``;
* the 4 MiB page pattern of the kdump scenarios (a copy of
  tests/vm/test_kdump.py's, so that edits there do not change this one);
* :func:`boot_stamped`: :meth:`harness.Guest.boot` with the host's arrival time
  of every serial line, for timing what happens between two lines
  (:func:`boot_stamped_arm64` for the arm64 guest, :func:`run_stamped` for any
  QEMU command).

Material that cannot be had raises :class:`harness.VmError` (an
AssertionError): the scenarios fail, never skip.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

from . import harness as h

XEN_CPU = "max,-smap"   # Xen 4.17 under TCG faults on SMAP with QEMU's "max" CPU


# --------------------------------------------------------------------------
# material


def generic_kernel() -> Path:
    """bookworm's linux-image-6.1.0-N-amd64 bzImage (signed PE; has CONFIG_XEN_DOM0)."""
    try:
        return h.material.bookworm_signed_bzimage()
    except Exception as e:  # material raises RuntimeError with the reason
        raise h.VmError(f"cannot get bookworm's generic amd64 kernel (Xen dom0): {e}") from e


def xen_gz() -> Path:
    """boot/xen-4.17-amd64.gz of xen-hypervisor-4.17-amd64 (gzip'd ELF with Multiboot 2)."""
    try:
        return h.material.xen_hypervisor_gz()
    except Exception as e:
        raise h.VmError(f"cannot get xen-hypervisor-4.17-amd64: {e}") from e


def extract_vmlinux(image: os.PathLike, outdir: Path) -> Path:
    """``pykexec extract IMAGE -o OUTDIR`` on the host; returns OUTDIR/vmlinux (an ELF)."""
    proc = subprocess.run([sys.executable, "-m", "pykexec", "extract", os.fspath(image), "-o", os.fspath(outdir)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    if proc.returncode != 0:
        raise h.VmError(f"pykexec extract {image} -o {outdir} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    vmlinux = Path(outdir) / "vmlinux"
    if not vmlinux.is_file():
        raise h.VmError(f"pykexec extract {image} wrote no vmlinux: {sorted(p.name for p in Path(outdir).iterdir())}")
    with open(vmlinux, "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF" or head[4] != 2 or int.from_bytes(head[18:20], "little") != 62:
        raise h.VmError(f"{vmlinux} is not an x86_64 ELF64 (starts {head.hex()})")
    return vmlinux


@contextlib.contextmanager
def qemu_cpu(cpu: str) -> Iterator[None]:
    """Boot with ``-cpu CPU`` inside the block (the harness reads PYKEXEC_VM_CPU at each boot)."""
    old = os.environ.get("PYKEXEC_VM_CPU")
    os.environ["PYKEXEC_VM_CPU"] = cpu
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYKEXEC_VM_CPU", None)
        else:
            os.environ["PYKEXEC_VM_CPU"] = old


# --------------------------------------------------------------------------
# a boot with host-side arrival times of the serial lines


@dataclasses.dataclass
class StampedLine:
    t: float     # host time.monotonic() when the line's first byte arrived
    text: str    # without the line end


@dataclasses.dataclass
class StampedBoot:
    serial: h.Serial
    lines: list[StampedLine]
    t_start: float  # time.monotonic() when QEMU was started

    def first(self, needle: str, after: float = float("-inf")) -> Optional[StampedLine]:
        """The first line containing ``needle`` that arrived after ``after``."""
        return next((ln for ln in self.lines if ln.t > after and needle in ln.text), None)

    def index(self, line: StampedLine) -> int:
        return next(i for i, ln in enumerate(self.lines) if ln is line)


def boot_stamped(g: h.Guest, append: str = "", *, memory: int = h.DEFAULT_MEMORY,
                 timeout: float = h.DEFAULT_TIMEOUT, quiet: bool = True) -> StampedBoot:
    """As :meth:`harness.Guest.boot`, reading QEMU's serial output through a pipe and
    stamping each line with the host's monotonic clock when its first byte arrived.

    The log is written to the run directory as usual (``serial.log``), plus
    ``serial.stamped`` (seconds since QEMU started, tab, line).
    """
    inner = g.initrd()
    g.embedded.file(h.GUEST_VMLINUZ, g.kernel)
    g.embedded.file(h.GUEST_INITRD, inner)
    emb = g.embedded.write_file(g.dir / "embed.cpio", compress=False)
    full = h.atomic_write(g.dir / "boot-initrd.img", lambda f: h.concat([inner, emb], f))
    cmdline = " ".join(w for w in ["console=ttyS0", "panic=-1", "quiet" if quiet else "", append] if w)
    tools = h.host_tools()
    cmd = [tools["qemu"], "-accel", "tcg", "-cpu", os.environ.get("PYKEXEC_VM_CPU", "max"),
           "-m", str(memory), "-smp", "1", "-nographic", "-no-reboot", "-nic", "none",
           "-kernel", os.fspath(g.kernel), "-initrd", os.fspath(full), "-append", cmdline]
    return run_stamped(g, cmd, timeout)


def boot_stamped_arm64(g, append: str = "", *, memory: int = 1024, timeout: float = 240.0,
                       quiet: bool = True, cpu: Optional[str] = None) -> StampedBoot:
    """:func:`boot_stamped` for an :class:`arm64.Guest`: qemu-system-aarch64 ``-M virt``,
    ``console=ttyAMA0``, the CPU of :meth:`arm64.Guest.boot` (``$PYKEXEC_VM_ARM64_CPU`` or
    ``max,pauth-impdef=on``); the guest's Image at ``/vm/Image`` and its initramfs at
    ``/vm/initrd.img``."""
    from . import arm64
    inner = g.initrd()
    g.embedded.file(arm64.GUEST_IMAGE, g.kernel)
    g.embedded.file(h.GUEST_INITRD, inner)
    emb = g.embedded.write_file(g.dir / "embed.cpio", compress=False)
    full = h.atomic_write(g.dir / "boot-initrd.img", lambda f: h.concat([inner, emb], f))
    cmdline = " ".join(w for w in [f"console={arm64.CONSOLE}", "panic=-1", "quiet" if quiet else "", append] if w)
    cpu = cpu or os.environ.get("PYKEXEC_VM_ARM64_CPU", arm64.DEFAULT_CPU)
    cmd = [os.fspath(arm64.host_tools()["qemu"]), "-accel", "tcg", *arm64.MACHINE, "-cpu", cpu,
           "-m", str(memory), "-smp", "1", "-nographic", "-no-reboot", "-nic", "none",
           "-kernel", os.fspath(g.kernel), "-initrd", os.fspath(full), "-append", cmdline]
    return run_stamped(g, cmd, timeout)


def run_stamped(g: h.Guest, cmd: Sequence[str], timeout: float) -> StampedBoot:
    """Run QEMU (``cmd``, its serial console on stdout) until it exits, stamping each
    console line on arrival; ``$PYKEXEC_VM_TIMEOUT_SCALE`` scales ``timeout``."""
    timeout *= float(os.environ.get("PYKEXEC_VM_TIMEOUT_SCALE", "1"))
    log_path = g.dir / "serial.log"
    lines: list[StampedLine] = []
    raw = bytearray()
    pending = b""
    pending_t: Optional[float] = None
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    timed_out = False
    fd = proc.stdout.fileno()
    try:
        while True:
            left = t0 + timeout - time.monotonic()
            if left <= 0:
                timed_out = True
                proc.kill()
                break
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            now = time.monotonic()
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            raw += chunk
            data = pending + chunk
            if pending_t is None:
                pending_t = now
            parts = data.split(b"\n")
            for part in parts[:-1]:
                lines.append(StampedLine(pending_t, part.decode(errors="replace").rstrip("\r")))
                pending_t = now
            pending = parts[-1]
            if not pending:
                pending_t = None
    finally:
        rc = proc.wait()
        proc.stdout.close()
    if pending:
        lines.append(StampedLine(pending_t or time.monotonic(), pending.decode(errors="replace")))
    seconds = time.monotonic() - t0
    log_path.write_bytes(("# " + " ".join(cmd) + "\n").encode() + bytes(raw))
    (g.dir / "serial.stamped").write_text("".join(f"{ln.t - t0:10.4f}\t{ln.text}\n" for ln in lines))
    serial = h.Serial(g.scenario, bytes(raw).decode(errors="replace"), seconds, log_path)
    print(f"[vm] {g.scenario}: {seconds:.1f} s wall (qemu rc {rc}{', TIMEOUT' if timed_out else ''})",
          file=sys.stderr)
    if timed_out:
        serial.fail(f"QEMU did not power off within {timeout:.0f} s (killed)")
    if rc != 0:
        serial.fail(f"QEMU exited {rc}")
    return StampedBoot(serial, lines, t0)


def strip_ansi(text: str) -> str:
    """A console line without terminal escape sequences and control characters."""
    import re
    return re.sub(r"\x1b(\[[0-9;?]*[A-Za-z]|c)", "", text).strip("\x00\r\n\t ")


def median(xs: Sequence[float]) -> float:
    import statistics
    return statistics.median(xs)
