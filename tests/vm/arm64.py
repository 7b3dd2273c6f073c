"""The arm64 guest: Debian's arm64 kernel under ``qemu-system-aarch64 -M virt`` (TCG).

Everything in the guest is Debian's own arm64 build, extracted with
``dpkg-deb -x`` (never installed; tests/material.py fetches and caches it):

* kernel: sid's 7.x ``linux-binary-*-arm64`` Image (:func:`kernel`); its
  config is checked for what the guest needs built in (PL011 console,
  initramfs, devtmpfs, PSCI power-off, ``KEXEC``).  It has no
  ``KEXEC_FILE``, so kexec here means ``kexec_load``.  :func:`file_kernel` is
  the exception: our own build of Debian's linux-source-7.2 with
  ``KEXEC_FILE`` (``Guest(name, image=file_kernel())``).
* ``base`` layer (cached, keyed by every package version): trixie's
  busybox-static at ``/bin/busybox`` (applet links are made by ``/init`` with
  ``busybox --install -s``: the arm64 busybox cannot run here to list them),
  trixie's Python 3.13 (``/usr/bin/python3``) with pykexec's dependencies as
  Debian packages in ``/usr/lib/python3/dist-packages``, and Debian's
  kexec-tools at ``/opt/kexec-tools/sbin/kexec`` (off ``PATH``, as in the x86
  guest) with its libraries.  When the host has a ``python3.13`` (same bytecode
  as the guest's), the layer carries compiled ``.pyc`` files for the stdlib
  and the packages; otherwise the guest compiles on first import (slower).
* ``pykexec`` layer (cached by content): ``src/pykexec`` as
  ``/usr/local/lib/python3.13/dist-packages/pykexec`` (on the guest's
  ``sys.path``), ``/usr/local/bin/pykexec`` and the ``kexec`` shim.
* ``scenario`` layer (per boot): ``/init``, ``/vm/lib.sh`` and the stage
  scripts, exactly as in the x86 guest (tests/vm/harness.py), so
  :func:`harness.sh_script`, :func:`py_script`, ``mark``/``run`` and
  :class:`harness.Serial` work unchanged.
* ``embed`` layer (per boot, uncompressed): ``/vm/Image``, the kernel the
  guest booted, and whatever big files a scenario embeds.

QEMU: ``qemu-system-aarch64 -accel tcg -M virt -cpu max,pauth-impdef=on``
(``$PYKEXEC_VM_ARM64_CPU`` overrides the CPU; plain ``max`` emulates pointer
authentication with QARMA and is 2-3x slower), ``console=ttyAMA0`` (PL011),
no firmware: the kernel gets QEMU's DTB.  ``$PYKEXEC_VM_TIMEOUT_SCALE``
applies as in the x86 guest.

Timing (TCG, 2 cores, idle): the guest reaches ``/init`` in 5-6 s (a 24 MB
base layer, the 48 MB Image embedded); ``import pykexec`` with its
dependencies takes 1.2 s and each pykexec command 2-3.5 s.  kexec-tools' own
arm64 purgatory checks the SHA-256 of every segment with the MMU off: about
15 s of TCG time for the 48 MB Image (``kexec -i`` skips the check).  On a
machine loaded by other jobs, every figure grows 2-4x.

Material that cannot be had raises :class:`harness.VmError`: a test fails
with the reason and never skips.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence, Union

from . import harness as h
from .newc import Cpio, atomic_write

material = h.material

#: the guest's interpreter and where pykexec's sources go (on its sys.path)
GUEST_PYTHON = "/usr/bin/python3"
GUEST_PYKEXEC_SITE = "/usr/local/lib/python3.13/dist-packages"
#: Debian's kexec-tools inside the guest (not on PATH: ``kexec`` is pykexec's shim)
GUEST_KEXEC_TOOLS = h.GUEST_KEXEC_TOOLS
#: the kernel the guest booted, inside the guest
GUEST_IMAGE = "/vm/Image"

CONSOLE = "ttyAMA0"
MACHINE = ["-M", "virt"]
#: -cpu max emulates pointer authentication with QARMA (2-3x slower under TCG)
DEFAULT_CPU = "max,pauth-impdef=on"
DEFAULT_MEMORY = 1024
DEFAULT_TIMEOUT = 240.0

#: bump to rebuild the cached arm64 layers
LAYOUT_VERSION = 1

#: CONFIG_* the guest needs built in (=y)
REQUIRED_CONFIG = (
    "CONFIG_SERIAL_AMBA_PL011", "CONFIG_SERIAL_AMBA_PL011_CONSOLE", "CONFIG_BLK_DEV_INITRD",
    "CONFIG_RD_GZIP", "CONFIG_DEVTMPFS", "CONFIG_PROC_FS", "CONFIG_SYSFS", "CONFIG_ARM_PSCI_FW",
    "CONFIG_KEXEC",
)

#: /init of the arm64 guest: make busybox's applet links, then the x86 guest's /init
INIT_PRELUDE = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
/bin/busybox umount /proc
"""

#: applets the busybox-only stage-2 initramfs links (harness.INIT, lib.sh, STAGE2_REPORT)
STAGE2_APPLETS = ("sh", "mount", "umount", "mkdir", "cat", "cut", "echo", "sync", "poweroff",
                  "sleep", "uname", "awk", "[", "test", "ls", "dmesg", "grep", "tr", "od")


def init_script() -> str:
    body = h.INIT.split("\n", 1)[1]  # without its #! line
    return INIT_PRELUDE + body


# --------------------------------------------------------------------------
# host tools and material


def host_tools() -> dict:
    """qemu-system-aarch64 (from qemu-system-arm), installed from the system's suite if missing."""
    if shutil.which("qemu-system-aarch64") is None:
        h._apt_install(["qemu-system-arm"], "booting arm64 guests")
    qemu = shutil.which("qemu-system-aarch64")
    if qemu is None:
        raise h.VmError("qemu-system-aarch64 is not on PATH even after installing qemu-system-arm")
    return {"qemu": qemu, "qemu_version": h._dpkg_version("qemu-system-arm")}


def _material(what: str, fn):
    try:
        return fn()
    except Exception as e:  # material raises RuntimeError with the reason
        raise h.VmError(f"cannot get {what}: {e}") from e


def kernel_config() -> dict:
    path = _material("the config of sid's arm64 kernel", material.sid_arm64_config)
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^(CONFIG_\w+)=(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def kernel() -> Path:
    """sid's arm64 Image (7.x), checked to have what the guest needs built in."""
    image = _material("sid's arm64 kernel (linux-image-arm64)", material.sid_arm64_image)
    cfg = kernel_config()
    missing = [c for c in REQUIRED_CONFIG if cfg.get(c) != "y"]
    if missing:
        raise h.VmError(f"{image}: its config does not build in {missing}; the arm64 guest needs them")
    return image


def file_kernel() -> Path:
    """An arm64 Image with KEXEC_FILE, which no Debian arm64 kernel has: Debian's
    linux-source-7.2 built by material.arm64_file_kernel (tinyconfig + what the guest needs
    + ``ARM64_FILE_KERNEL_CONFIG``; cached by source version and configuration)."""
    image, _config = _material("the arm64 KEXEC_FILE kernel (linux-source-7.2)", material.arm64_file_kernel)
    return image


def kernel_package() -> tuple:
    """(package, version, arch) of :func:`kernel`."""
    return material.package_of(kernel())


def python_tree() -> Path:
    return _material("trixie's arm64 Python layer", material.arm64_python_tree)


def kexec_tools_tree() -> Path:
    return _material("trixie's kexec-tools:arm64", material.arm64_kexec_tools_tree)


def busybox() -> Path:
    return _material("trixie's busybox-static:arm64", material.arm64_busybox)


def packages() -> dict:
    """{package: version} of everything in the guest (kernel, userland), for reports."""
    out = dict(material.packages_of(python_tree()))
    out.update(material.packages_of(kexec_tools_tree()))
    name, version, _arch = material.package_of(busybox())
    out[name] = version
    name, version, _arch = kernel_package()
    out[name] = version
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------
# checks on the extracted trees (the arm64 binaries cannot run here)


def _needed(path: Path) -> Optional[list]:
    """DT_NEEDED of an ELF file, or None if it is not a dynamic ELF."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                return None
            f.seek(0)
            elf = ELFFile(f)
            out = []
            for sec in elf.iter_sections():
                if isinstance(sec, DynamicSection):
                    out += [t.needed for t in sec.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
            return out
    except (ELFError, OSError):
        return None


def check_libraries(root: Path, entries: Sequence[Path]) -> None:
    """Every library that ``entries`` (ELF files under ``root``: executables, extension
    modules) load, directly or through another library, is in ``root``'s library path."""
    libdirs = [root / "usr/lib/aarch64-linux-gnu", root / "usr/lib"]
    missing: dict = {}
    seen: set = set()
    todo = [Path(e) for e in entries]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        for lib in _needed(p) or ():
            hits = [d / lib for d in [*libdirs, p.parent] if (d / lib).exists()]
            if hits:
                todo.append(Path(os.path.realpath(hits[0])))
            else:
                missing.setdefault(lib, []).append(str(p.relative_to(root)) if root in p.parents else str(p))
    if missing:
        raise h.VmError(f"{root}: libraries not in the arm64 tree: "
                        + "; ".join(f"{lib} (needed by {', '.join(sorted(by)[:3])})" for lib, by in missing.items()))


def _python_entries(root: Path) -> list:
    """The interpreter and every extension module of the arm64 Python tree."""
    out = [root / "usr/bin/python3.13"]
    for d in (root / "usr/lib/python3.13/lib-dynload", root / "usr/lib/python3/dist-packages"):
        out += sorted(d.rglob("*.so"))
    return out


# --------------------------------------------------------------------------
# .pyc files, compiled by a host python3.13 when there is one


def host_python313() -> Optional[str]:
    """A host interpreter whose bytecode the guest's Python 3.13 accepts, or None."""
    cands = [shutil.which("python3.13"), *sorted(map(str, Path.home().glob(".pyenv/versions/3.13*/bin/python3.13")))]
    for path in cands:
        if path is None:
            continue
        proc = subprocess.run([path, "-c", "import importlib.util,sys;"
                               "print(sys.implementation.cache_tag, importlib.util.MAGIC_NUMBER.hex())"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if proc.returncode == 0 and proc.stdout.split()[:1] == ["cpython-313"]:
            return path
    return None


def _compile(py313: str, src_root: Path, dirs: Sequence[Path], prefix: Path) -> None:
    """Compile ``dirs`` (under ``src_root``) into ``prefix`` (PYTHONPYCACHEPREFIX), with
    guest paths as the code's file names."""
    env = dict(os.environ, PYTHONPYCACHEPREFIX=os.fspath(prefix))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    args = [py313, "-m", "compileall", "-q", "-j0", "-s", os.fspath(src_root), "-p", "/",
            "-x", r"/(test|tests|idlelib|tkinter|turtledemo|lib2to3)/", *map(os.fspath, dirs)]
    # compileall exits 1 when some file does not compile (py2-only scripts in packages):
    # those stay without a pyc, the rest is written
    subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _add_pycs(c: "TreeCpio", prefix: Path, host_root: Path, guest_root: str = "/") -> int:
    """Add every pyc under ``prefix`` (PYTHONPYCACHEPREFIX layout of ``host_root``) at
    its guest ``__pycache__`` path."""
    n = 0
    base = prefix / host_root.relative_to("/")
    for dirpath, _dirs, files in os.walk(base):
        rel = Path(dirpath).relative_to(base)
        for name in files:
            if name.endswith(".pyc"):
                guest = Path(guest_root) / rel / "__pycache__" / name
                c.file(os.fspath(guest), Path(dirpath) / name, mode=0o644)
                n += 1
    return n


# --------------------------------------------------------------------------
# layers


class TreeCpio(Cpio):
    """A :class:`Cpio` whose paths are taken as they are: an arm64 tree is its own truth,
    and the host's symlinked directories (which Cpio follows) say nothing about it."""

    def dir(self, path: str, mode: int = 0o755) -> None:
        self._parents(path)
        self._entries[path] = ("dir", mode, 0)

    def file(self, path: str, host, mode: Optional[int] = None) -> None:
        st = os.stat(host)
        self._parents(path)
        self._entries.pop(path, None)
        self._entries[path] = ("file", stat.S_IMODE(st.st_mode) if mode is None else mode,
                               int(st.st_mtime), os.fspath(host), st.st_size)

    def symlink(self, path: str, target: str) -> None:
        self._parents(path)
        self._entries[path] = ("symlink", 0o777, 0, target)

    def data(self, path: str, data: Union[bytes, str], mode: int = 0o644, mtime: int = 0) -> None:
        self._parents(path)
        self._entries.pop(path, None)
        self._entries[path] = ("data", mode, mtime, data.encode() if isinstance(data, str) else bytes(data))


def _add_tree(c: TreeCpio, root: Path, *, rename: Optional[dict] = None) -> None:
    """Every directory, file and symlink of ``root`` at the same path in the guest."""
    rename = rename or {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root).as_posix()
        base = "" if rel == "." else "/" + rel
        for d in list(dirnames):
            if os.path.islink(os.path.join(dirpath, d)):
                dirnames.remove(d)
                filenames.append(d)
        for d in dirnames:
            c.dir(f"{base}/{d}", stat.S_IMODE(os.stat(os.path.join(dirpath, d)).st_mode))
        for name in filenames:
            full = os.path.join(dirpath, name)
            g = rename.get(f"{base}/{name}", f"{base}/{name}")
            if os.path.islink(full):
                c.symlink(g, os.readlink(full))
            else:
                c.file(g, full)


def base_layer() -> Path:
    """busybox + Python 3.13 and pykexec's dependencies + kexec-tools (gzip'd newc, cached)."""
    py = python_tree()
    kt = kexec_tools_tree()
    bb = busybox()
    py313 = host_python313()
    key = hashlib.sha256(
        f"{LAYOUT_VERSION}\n{py.parent.name}\n{kt.parent.name}\n{bb.parents[2].name}\n"
        f"pyc={bool(py313)}\n".encode()).hexdigest()[:16]
    path = h.cache_dir() / "layers" / f"arm64-base-{key}.cpio.gz"
    with h._lock("arm64-base"):
        if path.exists():
            return path
        t0 = time.monotonic()
        check_libraries(py, _python_entries(py))
        check_libraries(kt, [kt / "usr/sbin/kexec"])
        c = TreeCpio()
        _add_tree(c, py)  # with its merged-/usr links bin, sbin, lib -> usr/...
        _add_tree(c, kt, rename={"/usr/sbin/kexec": GUEST_KEXEC_TOOLS})
        c.file("/usr/bin/busybox", bb, mode=0o755)
        with tempfile.TemporaryDirectory(prefix="arm64-pyc.", dir=h.cache_dir()) as td:
            if py313:
                _compile(py313, py, [py / "usr/lib/python3.13", py / "usr/lib/python3/dist-packages"],
                         Path(td))
                n = _add_pycs(c, Path(td), py)
                h.log.info("arm64 base: %d pyc files compiled by %s", n, py313)
            else:
                h.log.warning("arm64 base: no host python3.13; the guest compiles its imports itself")
            c.write_file(path, compress=True)
        h.log.info("built %s (%d entries, %.1f MB) in %.1f s", path.name, len(c),
                   path.stat().st_size / 1e6, time.monotonic() - t0)
        olds = sorted(path.parent.glob("arm64-base-*.cpio.gz"), key=lambda p: p.stat().st_mtime)
        for old in olds[:-2]:
            if old != path:
                old.unlink(missing_ok=True)
    return path


def pykexec_layer() -> Path:
    """pykexec's sources (src/pykexec) on the guest's sys.path, the pykexec command and the
    kexec shim (gzip'd newc, cached by content)."""
    pkg_dir, files = h._pykexec_files()
    files = [f for f in files if pkg_dir in f.parents]  # the package itself, not the dist-info
    snap = {f: h._snapshot(f) for f in files}
    py313 = host_python313()
    digest = hashlib.sha256(f"{LAYOUT_VERSION}\0{GUEST_PYKEXEC_SITE}\0pyc={bool(py313)}\n".encode())
    for f, (data, mtime) in snap.items():
        digest.update(os.fspath(f.relative_to(pkg_dir)).encode() + b"\0" + data + b"\0%d\0" % mtime)
    path = h.cache_dir() / "layers" / f"arm64-pykexec-{digest.hexdigest()[:16]}.cpio.gz"
    with h._lock("arm64-pykexec"):
        if path.exists():
            return path
        c = TreeCpio()
        guest_pkg = f"{GUEST_PYKEXEC_SITE}/pykexec"
        with tempfile.TemporaryDirectory(prefix="arm64-pykexec.", dir=h.cache_dir()) as td:
            stage = Path(td) / "src"
            for f, (data, mtime) in snap.items():
                rel = f.relative_to(pkg_dir).as_posix()
                mode = stat.S_IMODE(os.stat(f).st_mode)
                c.data(f"{guest_pkg}/{rel}", data, mode=mode, mtime=mtime)
                if py313 and f.suffix == ".py":
                    out = stage / GUEST_PYKEXEC_SITE.lstrip("/") / "pykexec" / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(data)
                    os.utime(out, (mtime, mtime))
            if py313:
                pyc = Path(td) / "pyc"
                _compile(py313, stage, [stage / GUEST_PYKEXEC_SITE.lstrip("/")], pyc)
                _add_pycs(c, pyc, stage / GUEST_PYKEXEC_SITE.lstrip("/"), GUEST_PYKEXEC_SITE)
            c.data("/usr/local/bin/pykexec", h.PYKEXEC_WRAPPER.format(python=GUEST_PYTHON), mode=0o755)
            c.data("/usr/local/sbin/kexec", h.KEXEC_SHIM, mode=0o755)
            c.write_file(path, compress=True)
        olds = sorted(path.parent.glob("arm64-pykexec-*.cpio.gz"), key=lambda p: p.stat().st_mtime)
        for old in olds[:-8]:
            if old != path:
                old.unlink(missing_ok=True)
    return path


def prepare(first_kernel: Optional[Path] = None) -> dict:
    """Fetch/build everything the arm64 scenarios share (for a session fixture or a warm-up);
    ``first_kernel``: the kernel to boot when not sid's (:func:`file_kernel`)."""
    t0 = time.monotonic()
    out = {"tools": host_tools(), "kernel": first_kernel or kernel(), "base": base_layer(),
           "pykexec": pykexec_layer()}
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out


# --------------------------------------------------------------------------
# one scenario


def py_script(body: str) -> str:
    """A Python stage script run by the guest's /usr/bin/python3 (harness.py_script)."""
    return h.py_script(body, python=GUEST_PYTHON)


class Guest(h.Guest):
    """An arm64 scenario: the x86 :class:`harness.Guest` with the arm64 kernel and layers.

    Example::

        g = Guest("demo")
        g.stage(1, h.sh_script("mark hello world"))
        assert g.boot().value("hello") == "world"
    """

    def __init__(self, scenario: str, image: Optional[Path] = None) -> None:
        """``image``: the first kernel (default: sid's arm64 Image; :func:`file_kernel` has KEXEC_FILE)."""
        super().__init__(scenario, image=image or kernel())
        self.init_text = init_script()

    def layers(self) -> list:
        return [base_layer(), pykexec_layer()]

    def stage2_initrd(self, script: str, *, files: Optional[dict] = None, stage: int = 2) -> Path:
        """A small busybox-only arm64 initramfs that runs ``script`` as ``stage`` (host path),
        for the kernel a scenario kexecs into.  ``files`` maps guest paths to contents."""
        return h.busybox_initramfs(self, stage, script, files=files, applets=STAGE2_APPLETS,
                                   busybox=busybox())

    def boot(self, append: str = "", *, memory: int = DEFAULT_MEMORY, timeout: float = DEFAULT_TIMEOUT,
             kernel: Optional[Union[str, Path]] = None, quiet: bool = True, cpu: Optional[str] = None,
             extra_args: Sequence[str] = (), embed_initrd: bool = False,
             until: Optional[str] = None) -> h.Serial:
        """Boot once under qemu-system-aarch64 -M virt.  ``cpu`` defaults to
        ``$PYKEXEC_VM_ARM64_CPU`` or max,pauth-impdef=on; ``until`` as :func:`harness.run_qemu`."""
        inner = self.initrd()
        boot_kernel = Path(kernel) if kernel is not None else self.kernel
        self.embedded.file(GUEST_IMAGE, boot_kernel)
        if embed_initrd:
            self.embedded.file(h.GUEST_INITRD, inner)
        emb = self.embedded.write_file(self.dir / "embed.cpio", compress=False)
        full = atomic_write(self.dir / "boot-initrd.img", lambda f: h.concat([inner, emb], f))
        cmdline = " ".join(w for w in [f"console={CONSOLE}", "panic=-1", "quiet" if quiet else "", append] if w)
        cpu = cpu or os.environ.get("PYKEXEC_VM_ARM64_CPU", DEFAULT_CPU)
        return h.run_qemu(kernel=boot_kernel, initrd=full, append=cmdline, memory=memory, timeout=timeout,
                          log_path=self.dir / "serial.log", scenario=self.scenario,
                          extra_args=[*MACHINE, *extra_args], qemu=host_tools()["qemu"], cpu=cpu,
                          until=until)
