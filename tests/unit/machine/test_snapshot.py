"""snapshot() on fake /proc, /sys and /boot trees: what it reads, and what it says it could not."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from pykexec.machine import Range, snapshot

from .dtb import arm64_virt

DATA = Path(__file__).resolve().parents[2] / "data" / "machines"


def write(root: Path, rel: str, content: str | bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


def fake_host(tmp_path: Path, *, iomem: str, memmap: list[tuple[int, int, str]] = (), **extra) -> dict:
    proc, sys, boot = tmp_path / "proc", tmp_path / "sys", tmp_path / "boot"
    write(proc, "iomem", iomem)
    write(proc, "sys/kernel/osrelease", "6.1.0-56-cloud-amd64\n")
    write(proc, "cmdline", extra.pop("cmdline", "console=ttyS0 crashkernel=256M\n"))
    write(proc, "meminfo", "MemTotal:        1000000 kB\nMemFree: 1 kB\n")
    write(proc, "cpuinfo", "processor\t: 0\nflags\t\t: fpu la57\n")
    for i, (start, end, kind) in enumerate(memmap):
        write(sys, f"firmware/memmap/{i}/start", hex(start) + "\n")
        write(sys, f"firmware/memmap/{i}/end", hex(end) + "\n")
        write(sys, f"firmware/memmap/{i}/type", kind + "\n")
    write(sys, "kernel/kexec_loaded", "0\n")
    write(sys, "kernel/kexec_crash_loaded", "1\n")
    write(sys, "kernel/kexec_crash_size", "268435456\n")
    write(sys, "kernel/security/lockdown", "none [integrity] confidentiality\n")
    write(sys, "devices/system/cpu/possible", "0-3,6\n")
    write(boot, "config-6.1.0-56-cloud-amd64", "CONFIG_KEXEC_FILE=y\nCONFIG_X86_5LEVEL=y\n# CONFIG_IMA_KEXEC is not set\n")
    for rel, content in extra.items():
        write(sys, rel.replace("__", "/"), content)
    return {"proc": proc, "sys": sys, "boot": boot, "arch": "x86_64", "page_size": 4096}


def test_root_view(tmp_path):
    roots = fake_host(tmp_path, iomem=(DATA / "qemu-q35-1g-crashkernel256m-debian6.1.iomem").read_text())
    m = snapshot(**roots)
    assert m.memory_source == "iomem" and m.crashk_res == Range(0x2F000000, 0x10000000)
    assert (m.lockdown, m.kexec_loaded, m.kexec_crash_loaded, m.kexec_crash_size) == ("integrity", False, True,
                                                                                     0x10000000)
    assert m.possible_cpus == 5 and m.mem_total == 1000000 * 1024 and m.kernel_release == "6.1.0-56-cloud-amd64"
    assert m.config("CONFIG_KEXEC_FILE") == "y" and m.x86_5level is True
    assert m.hypervisor is None and m.kho_active is False and m.efi is False
    assert not any("iomem" in what for what, _ in m.unreadable)


def test_unprivileged_iomem_falls_back_to_memmap(tmp_path):
    roots = fake_host(tmp_path, iomem=(DATA / "dev-host-unprivileged.iomem").read_text(),
                      memmap=[(0x0, 0x9FBFF, "System RAM"), (0x100000, 0xBFFFFFFF, "System RAM"),
                              (0xEEC00000, 0xFEBFFFFF, "Reserved")])
    m = snapshot(**roots)
    assert m.memory_source == "memmap"
    assert m.walkable_ram() == (Range(0, 0x9FC00), Range(0x100000, 0xBFF00000))
    assert any("CAP_SYS_ADMIN" in why for _, why in m.unreadable)
    assert m.crashk_res is None and any("crash region" in n for n in m.notes)


def test_permission_denied_is_reported(tmp_path):
    roots = fake_host(tmp_path, iomem="00001000-0009fbff : System RAM\n")
    secret = roots["sys"] / "kernel/security/lockdown"
    secret.chmod(0)
    try:
        m = snapshot(**roots)
    finally:
        secret.chmod(0o644)
    if os.geteuid() == 0:  # root reads anything; nothing to report
        assert m.lockdown == "integrity"
    else:
        assert m.lockdown is None and any("permission denied" in why for _, why in m.unreadable)


def test_missing_everything_is_said(tmp_path):
    m = snapshot(proc=tmp_path / "p", sys=tmp_path / "s", boot=tmp_path / "b", arch="x86_64")
    assert m.memory == () and m.memory_source == "none"
    whats = " ".join(w for w, _ in m.unreadable)
    assert "iomem" in whats and "memmap" in whats and "kexec_loaded" in whats and "config" in whats


def test_xen_and_kho(tmp_path):
    roots = fake_host(tmp_path, iomem="00001000-0009fbff : System RAM\n", cmdline="kho=on\n",
                      **{"hypervisor__type": "xen\n",
                         "kernel__debug__kho__out__scratch_phys": "0x1000000\n0x80000000\n",
                         "kernel__debug__kho__out__scratch_len": "0x4000000\n0x10000000\n"})
    m = snapshot(**roots)
    assert m.hypervisor == "xen" and any("xen crash area" == w for w, _ in m.unreadable)
    assert m.kho_active is True and m.kho_scratch == (Range(0x1000000, 0x4000000), Range(0x80000000, 0x10000000))


def test_kho_on_but_scratch_unreadable(tmp_path):
    roots = fake_host(tmp_path, iomem="00001000-0009fbff : System RAM\n", cmdline="kho=on\n")
    write(roots["boot"], "config-6.1.0-56-cloud-amd64", "CONFIG_KEXEC_HANDOVER=y\n")
    m = snapshot(**roots)
    assert m.kho_active is True and m.kho_scratch == ()
    assert any("scratch_phys" in w for w, _ in m.unreadable)


def test_kho_asked_for_by_a_kernel_without_it(tmp_path):
    roots = fake_host(tmp_path, iomem="00001000-0009fbff : System RAM\n", cmdline="kho=on\n")
    assert snapshot(**roots).kho_active is False  # the config has no CONFIG_KEXEC_HANDOVER: kho= is ignored


def test_kho_on_by_default_in_the_config(tmp_path):
    roots = fake_host(tmp_path, iomem="00001000-0009fbff : System RAM\n")
    write(roots["boot"], "config-6.1.0-56-cloud-amd64",
          "CONFIG_KEXEC_HANDOVER=y\nCONFIG_KEXEC_HANDOVER_ENABLE_DEFAULT=y\n")
    assert snapshot(**roots).kho_active is True


def test_kho_disabled_though_asked_for_when_debugfs_has_no_kho(tmp_path):
    # kho=on, but the scratch reservation failed: kho_init made no kho/ in the mounted debugfs
    roots = fake_host(tmp_path, iomem="00001000-0009fbff : System RAM\n", cmdline="kho=on\n",
                      kernel__debug__memblock__memory="")
    write(roots["boot"], "config-6.1.0-56-cloud-amd64", "CONFIG_KEXEC_HANDOVER=y\n")
    m = snapshot(**roots)
    assert m.kho_active is False and m.kho_scratch == ()


def test_arm64_fdt_memblock_and_config_gz(tmp_path):
    proc, sys = tmp_path / "proc", tmp_path / "sys"
    write(proc, "config.gz", gzip.compress(b"CONFIG_KEXEC_FILE=y\n"))
    write(sys, "firmware/fdt", arm64_virt())
    write(sys, "kernel/debug/memblock/memory", "   0: 0x0000000040000000..0x00000000bfffffff    0 NONE\n")
    write(sys, "kernel/debug/memblock/reserved", "   0: 0x0000000040000000..0x00000000411fffff    0 NONE\n")
    m = snapshot(proc=proc, sys=sys, boot=tmp_path / "boot", arch="aarch64", page_size=4096)
    assert m.arch == "arm64" and m.memory_source == "fdt" and m.fdt_size == len(arm64_virt())
    assert m.memblock_free == (Range(0x41200000, 0x7EE00000),)
    assert m.config("CONFIG_KEXEC_FILE") == "y"
    assert m.fdt == arm64_virt()    # already packed: kept byte for byte


def test_rng_readiness_is_what_getrandom_nonblocking_says(tmp_path):
    def blocking(n, flags):
        assert flags & os.GRND_NONBLOCK
        raise BlockingIOError(11, "Resource temporarily unavailable")

    roots = fake_host(tmp_path, iomem="00001000-0009fbff : System RAM\n")
    assert snapshot(**roots, getrandom=lambda n, flags: bytes(n)).rng_ready is True
    assert snapshot(**roots, getrandom=blocking).rng_ready is False
