"""Boot real kernels under QEMU (TCG) with an initramfs that runs pykexec.

The guest is built from the host that runs the tests, so that the guest runs
the *same* interpreter, stdlib, shared libraries and packages:

* ``base`` layer (cached): static busybox and its applet links, the
  interpreter (``sys.executable`` and every symlink on the way to it),
  libpython, the stdlib without tests/GUI/ensurepip/config, the venv's
  ``pyvenv.cfg`` and site-packages holding pykexec's dependencies, every
  shared library ``ldd`` lists for all of those, and Debian's kexec-tools
  ``kexec`` (at ``/opt/kexec-tools/sbin/kexec``, off ``PATH``) with its
  libraries.  Everything sits at its original path.
* ``pykexec`` layer (cached by content): the pykexec package at its original
  path (it is installed editable), its dist-info and ``.pth``, a ``pykexec``
  command and a ``kexec`` shim that runs ``pykexec kexec "$@"``.
* ``scenario`` layer (per boot): ``/init``, ``/dev/console``, ``/vm/lib.sh``,
  the scenario's stage scripts and files.
* ``embed`` layer (per boot, uncompressed): ``/vm/vmlinuz`` (the kernel the
  guest booted) and ``/vm/initrd.img`` = base + pykexec + scenario, so that
  the guest can kexec into the same kernel with the same tools, plus any big
  files a scenario adds (UKIs, ...).

The kernel unpacks concatenated newc archives in order (later files replace
earlier ones), so the layers are simply concatenated into the ``-initrd``.

``/init`` mounts proc, sys, devtmpfs and debugfs, finds the stage (``stage=N``
on the command line, else ``/vm/stage``, else 1), runs
``/vm/scenario/stage<N>`` and powers off; QEMU runs with ``-no-reboot``.
The guest reports through lines ``@@PYKX <name> <value>`` on the serial
console (see ``/vm/lib.sh``), which :class:`Serial` parses.

Cache: ``~/.cache/pykexec-tests/vm/`` (or ``$PYKEXEC_TEST_CACHE/vm``):
``layers/`` (built archives, keyed by package versions and a hash of every
input), ``deb/`` (kexec-tools), ``runs/<scenario>.<time>.<rand>/`` (the last runs' serial
log and initrds), ``vm-timings.json`` (wall time of every boot).

Environment: ``PYKEXEC_VM_CPU`` (QEMU ``-cpu``, default ``max``; ``qemu64`` boots
about 30 % faster under TCG, as glibc then avoids AVX code paths),
``PYKEXEC_VM_TIMEOUT_SCALE`` (multiplies every boot's timeout, for loaded
machines), ``PYKEXEC_VM_COMPRESSION`` (``gzip`` or ``zstd`` for the cached
layers).

Material that cannot be had raises :class:`VmError` (an AssertionError), so a
test fails with the reason; nothing here ever skips.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Optional, Sequence, Union

try:
    from tests import material
except ImportError:  # tests/ itself on sys.path
    import material  # type: ignore[no-redef]

from .newc import Cpio, NewcError, atomic_write, canon  # noqa: F401  (Cpio, canon: for scenarios)

log = logging.getLogger(__name__)

#: bump to rebuild every cached layer
LAYOUT_VERSION = 3

#: the guest's interpreter: the one running the tests, at the same path
GUEST_PYTHON = sys.executable
#: Debian's kexec-tools inside the guest (not on PATH: ``kexec`` is the shim)
GUEST_KEXEC_TOOLS = "/opt/kexec-tools/sbin/kexec"
#: where the guest finds the kernel it booted and its own initramfs
GUEST_VMLINUZ = "/vm/vmlinuz"
GUEST_INITRD = "/vm/initrd.img"

MARK = "@@PYKX"
DEFAULT_TIMEOUT = 180.0
DEFAULT_MEMORY = 1024
#: compression of the cached layers: "gzip" or "zstd" (zstd measured no faster to unpack here)
LAYER_COMPRESSION = os.environ.get("PYKEXEC_VM_COMPRESSION", "gzip")

# stdlib parts the guest never needs (top-level names under lib/python3.X)
STDLIB_EXCLUDE = frozenset({
    "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
    "pydoc_data", "site-packages", "dist-packages", "__phello__",
    "turtle.py", "sqlite3/test", "distutils/tests", "unittest/test",
    "ctypes/test", "tkinter/test",
})
DYNLOAD_EXCLUDE = re.compile(r"^(_tkinter|_test|_ctypes_test|_xxtestfuzz|xxlimited|xxsubtype|_xxsubinterpreters)")

PathLike = Union[str, "os.PathLike[str]"]


class VmError(NewcError):
    """A VM scenario could not be prepared or did not do what it should."""


# --------------------------------------------------------------------------
# basics


def cache_dir() -> Path:
    d = material.cache_root() / "vm"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _run(cmd: Sequence, *, what: str, cwd: Optional[PathLike] = None, timeout: float = 1800,
         env: Optional[dict] = None) -> str:
    try:
        proc = subprocess.run([os.fspath(c) for c in cmd], cwd=cwd, env=env, timeout=timeout,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    except FileNotFoundError as e:
        raise VmError(f"{what}: {cmd[0]} not found ({e})") from e
    except subprocess.TimeoutExpired as e:
        raise VmError(f"{what}: `{' '.join(map(str, cmd))}` timed out after {timeout} s") from e
    if proc.returncode != 0:
        raise VmError(f"{what}: `{' '.join(map(str, cmd))}` exited {proc.returncode}:\n"
                      f"{proc.stderr.decode(errors='replace')[-3000:]}")
    return proc.stdout.decode(errors="replace")


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    d = cache_dir() / "locks"
    d.mkdir(exist_ok=True)
    with open(d / f"{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _dpkg_version(pkg: str) -> Optional[str]:
    proc = subprocess.run(["dpkg-query", "-W", "-f", "${Status}\t${Version}", pkg],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if proc.returncode != 0 or "install ok installed" not in proc.stdout:
        return None
    return proc.stdout.split("\t", 1)[1]


def _apt_install(pkgs: Sequence[str], why: str) -> None:
    """apt-get install host tools (the system's own suite only)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *pkgs]
    log.info("installing %s for %s", " ".join(pkgs), why)
    try:
        _run(cmd, what=f"install {' '.join(pkgs)} ({why})", env=env)
    except VmError:
        # a fresh machine may have no lists yet
        _run(["apt-get", "update"], what="apt-get update", env=env)
        _run(cmd, what=f"install {' '.join(pkgs)} ({why})", env=env)


def _is_static_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        phoff = int.from_bytes(head[0x20:0x28], "little")
        phentsize = int.from_bytes(head[0x36:0x38], "little")
        phnum = int.from_bytes(head[0x38:0x3a], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(int.from_bytes(table[i:i + 4], "little") != 3  # PT_INTERP
               for i in range(0, len(table), phentsize))


def host_tools() -> dict:
    """Make sure qemu-system-x86_64, static busybox and ldd exist; return their paths and versions."""
    if shutil.which("qemu-system-x86_64") is None or _dpkg_version("qemu-system-x86") is None:
        _apt_install(["qemu-system-x86"], "booting guests")
    busybox = Path("/bin/busybox")
    if _dpkg_version("busybox-static") is None or not busybox.exists() or not _is_static_elf(busybox):
        _apt_install(["busybox-static"], "the guest's /bin/busybox")
    if not busybox.exists() or not _is_static_elf(busybox):
        raise VmError(f"{busybox} is not a static ELF even after installing busybox-static")
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise VmError("qemu-system-x86_64 is not on PATH even after installing qemu-system-x86")
    if shutil.which("ldd") is None:
        raise VmError("ldd is missing (package libc-bin)")
    return {
        "qemu": qemu,
        "qemu_version": _dpkg_version("qemu-system-x86"),
        "busybox": str(busybox),
        "busybox_version": _dpkg_version("busybox-static"),
    }


# --------------------------------------------------------------------------
# material


def kernel() -> Path:
    """bookworm's linux-image-6.1.0-N-cloud-amd64 bzImage (tests/material.py caches it)."""
    try:
        return material.bookworm_cloud_bzimage()
    except Exception as e:  # material raises RuntimeError with the reason
        raise VmError(f"cannot get the bookworm cloud kernel: {e}") from e


def _apt_candidate(pkg: str) -> str:
    for attempt in range(2):
        out = _run(["apt-cache", "policy", pkg], what=f"apt-cache policy {pkg}")
        m = re.search(r"Candidate:\s*(\S+)", out)
        if m and m.group(1) != "(none)":
            return m.group(1)
        if attempt == 0:  # a fresh machine may have no lists yet
            _run(["apt-get", "update"], what="apt-get update",
                 env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    raise VmError(f"apt knows no candidate version of {pkg} even after apt-get update:\n{out}")


def kexec_tools() -> Path:
    """Debian's kexec-tools ``kexec`` (downloaded and unpacked, never installed).

    Its shared libraries (libxenctrl, ...) must be resolvable for ``ldd``, so
    the library packages it depends on are installed on the host.
    """
    version = _apt_candidate("kexec-tools")
    dest = cache_dir() / "deb" / f"kexec-tools_{version.replace(':', '%3a')}"
    binary = dest / "sbin" / "kexec"
    with _lock("kexec-tools"):
        if not binary.exists():
            work = Path(tempfile.mkdtemp(prefix="kexec-tools.", dir=cache_dir()))
            try:
                os.chmod(work, 0o777)  # so apt's _apt user may write there
                _run(["apt-get", "download", f"kexec-tools={version}"], cwd=work,
                     what="apt-get download kexec-tools")
                debs = list(work.glob("kexec-tools_*.deb"))
                if len(debs) != 1:
                    raise VmError(f"apt-get download kexec-tools left {debs}")
                tree = work / "tree"
                _run(["dpkg-deb", "-x", debs[0], tree], what="dpkg-deb -x kexec-tools")
                if not (tree / "sbin" / "kexec").exists():
                    raise VmError(f"{debs[0].name} has no sbin/kexec")
                if dest.exists():
                    shutil.rmtree(dest)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tree, dest)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        deps = _run(["apt-cache", "depends", "kexec-tools"], what="apt-cache depends kexec-tools")
        libs = sorted({m.group(1) for m in re.finditer(r"^\s*Depends:\s*(lib[\w.+-]+)", deps, re.M)})
        missing = [p for p in libs if _dpkg_version(p) is None]
        if missing:
            _apt_install(missing, "the libraries of kexec-tools' kexec")
    return binary


# --------------------------------------------------------------------------
# the base layer: busybox, python, libraries, packages, kexec-tools


def _stdlib_files() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for root, dirs, names in os.walk(stdlib):
        rel = Path(root).relative_to(stdlib)
        keep = []
        for d in dirs:
            r = (rel / d).as_posix()
            if r in STDLIB_EXCLUDE or d in ("test", "tests") or r.startswith("config-"):
                continue
            keep.append(d)
        dirs[:] = sorted(keep)
        in_cache = Path(root).name == "__pycache__"
        for n in sorted(names):
            r = (rel / n).as_posix()
            if r in STDLIB_EXCLUDE:
                continue
            if in_cache and not n.endswith(f".{sys.implementation.cache_tag}.pyc"):
                continue  # keep the plain .pyc, drop .opt-1/.opt-2
            if rel.as_posix() == "lib-dynload" and DYNLOAD_EXCLUDE.match(n):
                continue
            files.append(Path(root) / n)
    return files


def _requirement_name(req: str) -> Optional[str]:
    """The distribution a requirement names, or None if its marker excludes it here."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        if ";" in req and "extra" in req.split(";", 1)[1]:
            return None
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        return m.group(1) if m else None
    r = Requirement(req)
    if r.marker is not None and not r.marker.evaluate({"extra": ""}):
        return None
    return r.name


def _source_requirements(root: str) -> list[str]:
    """[project] dependencies of ``root``'s pyproject.toml when it is installed from a
    source tree (editable): they may be newer than the installed metadata."""
    import tomllib
    try:
        dist = metadata.distribution(root)
    except metadata.PackageNotFoundError:
        return []
    module = __import__(root)
    for parent in Path(module.__file__).resolve().parents:
        pyproject = parent / "pyproject.toml"
        if pyproject.is_file():
            try:
                project = tomllib.loads(pyproject.read_text()).get("project", {})
            except (OSError, tomllib.TOMLDecodeError):
                return []
            if re.sub(r"[-_.]+", "-", project.get("name", "")).lower() != \
                    re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower():
                return []
            return list(project.get("dependencies", []))
    return []


def _dists(root: str = "pykexec", extra: Iterable[str] = ()) -> list[metadata.Distribution]:
    """The distribution ``root`` and its required dependencies, recursively (from the
    installed metadata and, for a source install, from its pyproject.toml)."""
    todo = [root, *extra, *[n for n in map(_requirement_name, _source_requirements(root)) if n]]
    seen: dict[str, metadata.Distribution] = {}
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError as e:
            raise VmError(f"{name} (needed by {root}) is not installed in {sys.prefix}") from e
        seen[key] = dist
        todo += [n for n in map(_requirement_name, dist.requires or []) if n]
    return list(seen.values())


def _dist_files(dist: metadata.Distribution) -> list[Path]:
    out = []
    for f in dist.files or []:
        p = Path(os.path.normpath(dist.locate_file(f)))
        if ".." in f.parts or not p.is_file():
            continue  # console scripts in bin/ and the like
        if p.parent.name == "__pycache__" and not p.name.endswith(f".{sys.implementation.cache_tag}.pyc"):
            continue
        out.append(p)
    return out


def _ldd(paths: Iterable[Path]) -> tuple[dict[Path, list[str]], dict[Path, list[str]]]:
    """ldd each file: ({file: [library paths]}, {file: [libraries not found]})."""
    found: dict[Path, list[str]] = {}
    missing: dict[Path, list[str]] = {}
    paths = list(paths)
    for i in range(0, len(paths), 64):
        batch = paths[i:i + 64]
        proc = subprocess.run(["ldd", *map(os.fspath, batch)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        current: Optional[Path] = batch[0] if len(batch) == 1 else None
        for line in proc.stdout.splitlines():
            if len(batch) > 1 and not line.startswith("\t") and line.endswith(":"):
                current = Path(line[:-1])
                continue
            if current is None:
                continue
            found.setdefault(current, [])
            line = line.strip()
            if "not found" in line:
                missing.setdefault(current, []).append(line.split()[0])
                continue
            m = re.match(r"\S+ => (/\S+)", line) or re.match(r"(/\S+) \(0x", line)
            if m:
                found[current].append(m.group(1))
    return found, missing


def _base_inputs() -> dict:
    """Everything the base layer is made of, as host paths, plus the key parts."""
    tools = host_tools()
    kexec = kexec_tools()
    interp = Path(sys.executable)
    stdlib = _stdlib_files()
    dists = _dists()
    pkg_files = [f for d in dists if d.metadata["Name"].lower() != "pykexec" for f in _dist_files(d)]
    elves = [Path(os.path.realpath(interp)), kexec]
    elves += [p for p in stdlib if p.suffix == ".so"]
    elves += [p for p in pkg_files if p.suffix == ".so" or ".so." in p.name]
    found, missing = _ldd(elves)
    for elf, libs in missing.items():
        if elf in stdlib:
            # an extension module the host cannot load either: leave it out
            log.warning("leaving %s out of the guest: %s not found", elf, ", ".join(libs))
            stdlib.remove(elf)
            found.pop(elf, None)
        else:
            raise VmError(f"ldd {elf}: {', '.join(libs)} not found")
    libs = sorted({lib for lst in found.values() for lib in lst})
    venv_cfg = Path(sys.prefix) / "pyvenv.cfg"
    return {
        "tools": tools,
        "interp": interp,
        "venv_cfg": venv_cfg if venv_cfg.exists() else None,
        "stdlib": stdlib,
        "pkg_files": pkg_files,
        "dists": sorted(f"{d.metadata['Name']}=={d.version}" for d in dists if d.metadata["Name"].lower() != "pykexec"),
        "libs": libs,
        "kexec": kexec,
        "kexec_version": kexec.parents[1].name,
    }


def _key(parts: Iterable) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Path) and p.exists():
            st = p.stat()
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        else:
            h.update(f"{p}\n".encode())
    return h.hexdigest()[:16]


def base_layer() -> Path:
    """The cached base archive (gzip'd newc)."""
    inp = _base_inputs()
    key = _key([LAYOUT_VERSION, inp["tools"]["busybox_version"], inp["kexec_version"], sys.version,
                *inp["dists"], inp["interp"], *inp["stdlib"], *inp["pkg_files"],
                *map(Path, inp["libs"]), inp["venv_cfg"]])
    key = _key([key, LAYER_COMPRESSION])
    suffix = {"gzip": "gz", "zstd": "zst"}.get(LAYER_COMPRESSION, LAYER_COMPRESSION)
    path = cache_dir() / "layers" / f"base-py{sys.version_info[0]}.{sys.version_info[1]}-{key}.cpio.{suffix}"
    with _lock("base"):
        if path.exists():
            return path
        t0 = time.monotonic()
        c = Cpio()
        for d in ("/bin", "/sbin", "/usr/bin", "/usr/sbin", "/lib", "/lib64", "/etc", "/root"):
            if os.path.islink(d):
                c.host_path(d)
        c.host_path("/bin/busybox")
        applets = _run([inp["tools"]["busybox"], "--list-full"], what="busybox --list-full")
        for rel in applets.split():
            if rel and "/" in rel:
                dest = "/" + rel
                if canon(dest) != canon("/bin/busybox"):
                    c.symlink(dest, "/bin/busybox")
        c.host_path(inp["interp"])
        for f in inp["stdlib"]:
            c.host_path(f)
        if inp["venv_cfg"] is not None:
            c.host_path(inp["venv_cfg"])
            for name in ("python", "python3", f"python3.{sys.version_info[1]}"):
                p = Path(sys.prefix) / "bin" / name
                if p.exists() or p.is_symlink():
                    c.host_path(p)
        for f in inp["pkg_files"]:
            c.host_path(f)
        for lib in inp["libs"]:
            c.host_path(lib)
        # ctypes.util.find_library runs ldconfig -p
        for extra in ("/sbin/ldconfig", "/etc/ld.so.cache"):
            if os.path.exists(extra):
                c.host_path(extra)
        c.file(GUEST_KEXEC_TOOLS, inp["kexec"], mode=0o755)
        c.write_file(path, compress=LAYER_COMPRESSION)
        log.info("built %s (%d entries, %.1f MB) in %.1f s", path.name, len(c),
                 path.stat().st_size / 1e6, time.monotonic() - t0)
        # keep the newest two (another session may still be booting the previous one)
        olds = sorted(path.parent.glob("base-*.cpio.*"), key=lambda p: p.stat().st_mtime)
        for old in olds[:-2]:
            if old != path:
                old.unlink(missing_ok=True)
    return path


def _pykexec_files() -> tuple[Path, list[Path]]:
    import pykexec
    pkg_dir = Path(pykexec.__file__).resolve().parent
    files = sorted(p for p in pkg_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                   and p.suffix not in (".pyc", ".pyo"))
    extra = []
    try:
        dist = metadata.distribution("pykexec")
        extra = [p for p in _dist_files(dist) if pkg_dir not in p.parents and p.parent.name != "__pycache__"]
    except metadata.PackageNotFoundError:
        pass
    return pkg_dir, files + extra


def _snapshot(path: Path) -> tuple[bytes, int]:
    """A file's bytes and mtime, read consistently (the tree may be edited while we build)."""
    for _ in range(20):
        before = os.stat(path)
        data = path.read_bytes()
        after = os.stat(path)
        if (before.st_mtime_ns, before.st_size) == (after.st_mtime_ns, after.st_size) == \
                (after.st_mtime_ns, len(data)):
            return data, int(after.st_mtime)
        time.sleep(0.05)
    raise VmError(f"{path} keeps changing; cannot archive it")


def _pyc(source: bytes, path: Path, mtime: int) -> Optional[bytes]:
    """A timestamp-validated pyc of ``source`` (as py_compile writes it), or None on a syntax error.

    Compiled on the host because compiling in the guest costs seconds under TCG;
    the archive gives the source the same mtime, so the guest accepts the pyc.
    """
    import importlib.util
    import marshal
    try:
        code = compile(source, os.fspath(path), "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return None  # the guest reports the error itself
    header = importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little")
    header += (mtime & 0xFFFFFFFF).to_bytes(4, "little") + (len(source) & 0xFFFFFFFF).to_bytes(4, "little")
    return header + marshal.dumps(code)


PYKEXEC_WRAPPER = """#!/bin/sh
exec {python} -m pykexec "$@"
"""

KEXEC_SHIM = """#!/bin/sh
# kexec-tools compatible front end: pykexec kexec
exec pykexec kexec "$@"
"""


def pykexec_layer() -> Path:
    """pykexec at its original path (with pycs), plus /usr/local/bin/pykexec and the kexec shim.

    The sources are read once, so the layer is consistent even while the tree is edited.
    """
    import importlib.util
    pkg_dir, files = _pykexec_files()
    snap = {f: _snapshot(f) for f in files}
    h = hashlib.sha256()
    h.update(f"{LAYOUT_VERSION}\0{GUEST_PYTHON}\n".encode())
    for f, (data, mtime) in snap.items():
        h.update(os.fspath(f).encode() + b"\0" + data + b"\0%d\0" % mtime)
    path = cache_dir() / "layers" / f"pykexec-{h.hexdigest()[:16]}.cpio.gz"
    with _lock("pykexec"):
        if path.exists():
            return path
        c = Cpio()
        for f, (data, mtime) in snap.items():
            mode = stat.S_IMODE(os.stat(f).st_mode)
            c.data(os.fspath(f), data, mode=mode, mtime=mtime)
            if f.suffix == ".py":
                pyc = _pyc(data, f, mtime)
                if pyc is not None:
                    c.data(importlib.util.cache_from_source(os.fspath(f)), pyc, mtime=mtime)
        c.data("/usr/local/bin/pykexec", PYKEXEC_WRAPPER.format(python=GUEST_PYTHON), mode=0o755)
        c.data("/usr/local/sbin/kexec", KEXEC_SHIM, mode=0o755)
        c.write_file(path, compress=True)
        olds = sorted(path.parent.glob("pykexec-*.cpio.gz"), key=lambda p: p.stat().st_mtime)
        for old in olds[:-8]:
            if old != path:
                old.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------
# /init and the guest-side helpers

INIT = r"""#!/bin/busybox sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TMPDIR=/tmp PYTHONUTF8=1 LANG=C.UTF-8
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mkdir -p /tmp /run
stage=
for w in $(cat /proc/cmdline); do
    case "$w" in
        stage=*) stage="${w#stage=}" ;;
    esac
done
[ -z "$stage" ] && [ -f /vm/stage ] && stage="$(cat /vm/stage)"
[ -z "$stage" ] && stage=1
echo "@@PYKX stage-begin $stage $(cat /vm/scenario/name 2>/dev/null) uptime=$(cut -d' ' -f1 /proc/uptime)"
script=/vm/scenario/stage$stage
if [ -x "$script" ]; then
    "$script"
    rc=$?
else
    echo "@@PYKX no-stage-script $script"
    rc=127
fi
echo "@@PYKX stage-end $stage rc=$rc uptime=$(cut -d' ' -f1 /proc/uptime)"
sync
poweroff -f
sleep 5
echo "@@PYKX poweroff-failed"
"""

LIB_SH = r"""# sourced by stage scripts: . /vm/lib.sh
mark() { n="$1"; shift; echo "@@PYKX $n $*"; }
# run NAME CMD...: run CMD, report NAME.rc, and every line of stdout/stderr as NAME.out / NAME.err
run() {
    _n="$1"; shift
    _t0=$(cut -d' ' -f1 /proc/uptime)
    "$@" >/tmp/.run.out 2>/tmp/.run.err
    _rc=$?
    _t1=$(cut -d' ' -f1 /proc/uptime)
    echo "@@PYKX $_n.secs $(awk "BEGIN{print $_t1 - $_t0}")"
    while IFS= read -r _l || [ -n "$_l" ]; do echo "@@PYKX $_n.out $_l"; done </tmp/.run.out
    while IFS= read -r _l || [ -n "$_l" ]; do echo "@@PYKX $_n.err $_l"; done </tmp/.run.err
    echo "@@PYKX $_n.rc $_rc"
    return $_rc
}
# show NAME FILE: every line of FILE as NAME
show() { while IFS= read -r _l || [ -n "$_l" ]; do echo "@@PYKX $1 $_l"; done <"$2"; }
"""

PY_HELPERS = r'''
# guest helpers for python stage scripts
import subprocess as _sp, sys as _sys
def mark(name, *values):
    print("@@PYKX", name, *values, flush=True)
def run(name, *cmd):
    p = _sp.run(list(cmd), stdout=_sp.PIPE, stderr=_sp.PIPE, text=True, errors="replace")
    for l in p.stdout.splitlines(): mark(name + ".out", l)
    for l in p.stderr.splitlines(): mark(name + ".err", l)
    mark(name + ".rc", p.returncode)
    return p
'''


def sh_script(body: str) -> str:
    """A busybox-sh stage script with /vm/lib.sh sourced."""
    return "#!/bin/sh\n. /vm/lib.sh\n" + body.lstrip("\n")


def py_script(body: str, python: str = GUEST_PYTHON) -> str:
    """A Python stage script run by the guest's copy of the test interpreter
    (or by ``python``: the arm64 guest's is ``/usr/bin/python3``)."""
    return f"#!{python}\n" + PY_HELPERS + body.lstrip("\n")


# --------------------------------------------------------------------------
# serial console


@dataclasses.dataclass
class Serial:
    """The serial console of one VM run, with its ``@@PYKX`` marks."""

    scenario: str
    text: str
    seconds: float
    log_path: Path

    @property
    def marks(self) -> list[tuple[str, str]]:
        out = []
        for raw in self.text.splitlines():
            line = raw.rstrip("\r")
            i = line.find(MARK + " ")
            if i < 0:
                continue
            rest = line[i + len(MARK) + 1:]
            name, _, value = rest.partition(" ")
            out.append((name, value))
        return out

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.marks if n == name]

    def value(self, name: str) -> str:
        vals = self.values(name)
        if len(vals) != 1:
            self.fail(f"expected one mark {name!r}, found {len(vals)}: {vals}")
        return vals[0]

    def has(self, name: str) -> bool:
        return any(n == name for n, _ in self.marks)

    def lines(self, name: str) -> str:
        """A multi-line report (``run``'s NAME.out / ``show``) joined back together."""
        return "\n".join(self.values(name))

    def rc(self, name: str) -> int:
        return int(self.value(name + ".rc"))

    def command(self, name: str) -> str:
        """A readable summary of ``run NAME ...`` for assertion messages."""
        return (f"[{name}] rc={self.values(name + '.rc')}\n  stdout: {self.values(name + '.out')}\n"
                f"  stderr: {self.values(name + '.err')}")

    def expect_in_order(self, *names: str) -> None:
        """Each of ``names`` (a mark name, or ``name value-prefix``) appears, in this order."""
        marks = self.marks
        i = 0
        for want in names:
            wname, _, wval = want.partition(" ")
            while i < len(marks) and not (marks[i][0] == wname and marks[i][1].startswith(wval)):
                i += 1
            if i == len(marks):
                self.fail(f"mark {want!r} missing (or out of order) in expected sequence {names}")
            i += 1

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.text.splitlines()[-n:])

    def fail(self, msg: str) -> None:
        raise VmError(f"{self.scenario}: {msg}\n--- serial log {self.log_path} (tail) ---\n{self.tail()}")


# --------------------------------------------------------------------------
# QEMU


def _record_timing(record: dict) -> None:
    path = cache_dir() / "vm-timings.json"
    with _lock("timings"):
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, list):
                data = []
        except (FileNotFoundError, ValueError):
            data = []
        data.append(record)
        atomic_write(path, lambda f: f.write(json.dumps(data[-2000:], indent=1).encode()))


def run_qemu(*, kernel: PathLike, initrd: PathLike, append: str, log_path: Path, scenario: str,
             memory: int = DEFAULT_MEMORY, timeout: float = DEFAULT_TIMEOUT, smp: int = 1,
             extra_args: Sequence[str] = (), qemu: Optional[PathLike] = None,
             cpu: Optional[str] = None, until: Optional[str] = None) -> Serial:
    """Boot once; return the serial console.  Times out (killing QEMU) with the log tail.

    ``qemu`` and ``cpu`` default to the x86 guest's (qemu-system-x86_64,
    ``$PYKEXEC_VM_CPU`` or ``max``); the arm64 guest (tests/vm/arm64.py) passes its own.
    ``until``: a console line that ends the run as a power-off would (for a guest that
    halts rather than powers off, such as a purgatory refusing to boot); QEMU is then killed.
    """
    if qemu is None:
        qemu = host_tools()["qemu"]
    if cpu is None:
        cpu = os.environ.get("PYKEXEC_VM_CPU", "max")
    timeout *= float(os.environ.get("PYKEXEC_VM_TIMEOUT_SCALE", "1"))
    cmd = [os.fspath(qemu), "-accel", "tcg", "-cpu", cpu, "-m", str(memory), "-smp", str(smp),
           "-nographic", "-no-reboot", "-nic", "none",
           "-kernel", os.fspath(kernel), "-initrd", os.fspath(initrd), "-append", append, *extra_args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(log_path, "wb") as out:
        out.write(("# " + " ".join(cmd) + "\n").encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        rc, timed_out = _wait(proc, log_path, timeout, until)
    seconds = time.monotonic() - t0
    text = log_path.read_bytes().decode(errors="replace")
    serial = Serial(scenario, text, seconds, log_path)
    _record_timing({"scenario": scenario, "seconds": round(seconds, 2), "memory": memory,
                    "timed_out": timed_out, "qemu_rc": rc, "pid": os.getpid(),
                    "when": time.strftime("%Y-%m-%dT%H:%M:%S")})
    print(f"[vm] {scenario}: {seconds:.1f} s wall (qemu rc {rc}{', TIMEOUT' if timed_out else ''})",
          file=sys.stderr)
    if timed_out:
        serial.fail(f"QEMU did not power off within {timeout:.0f} s (killed)")
    if rc != 0:
        serial.fail(f"QEMU exited {rc}")
    return serial


def _wait(proc: subprocess.Popen, log_path: Path, timeout: float, until: Optional[str]) -> tuple:
    """(QEMU's exit code, timed out?); with ``until``, a run whose console shows it ends with rc 0."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return proc.wait(timeout=1.0 if until else max(0.0, deadline - time.monotonic())), False
        except subprocess.TimeoutExpired:
            pass
        if until and until.encode() in log_path.read_bytes():
            proc.kill()
            proc.wait()
            return 0, False
        if time.monotonic() >= deadline:
            proc.kill()
            return proc.wait(), True


class Guest:
    """One scenario: its stage scripts and files, its initramfs, one boot.

    Example::

        g = Guest("demo")
        g.stage(1, sh_script("mark hello world"))
        assert g.boot().value("hello") == "world"
    """

    #: the guest's /init (tests/vm/arm64.py puts a prelude in front)
    init_text: Optional[str] = None  # None: INIT

    def __init__(self, scenario: str, image: Optional[PathLike] = None) -> None:
        """``image``: the kernel to boot (default: :func:`kernel`, the x86 guest's)."""
        self.scenario = scenario
        safe = re.sub(r"[^\w.-]", "_", scenario)
        runs = cache_dir() / "runs"
        runs.mkdir(exist_ok=True)
        # one directory per run (several sessions may boot the same scenario at once);
        # keep the last few of each scenario for post-mortems
        for old in sorted(runs.glob(f"{safe}.*"), key=lambda p: p.stat().st_mtime)[:-2]:
            shutil.rmtree(old, ignore_errors=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{safe}.{time.strftime('%H%M%S')}.", dir=runs))
        self.layer = Cpio()
        self.embedded = Cpio()
        self._inner: Optional[Path] = None
        self.kernel = kernel() if image is None else Path(image)
        self.layer.data("/vm/scenario/name", scenario + "\n")

    # -- building
    def stage(self, n: int, script: str) -> None:
        self._mutable()
        self.layer.data(f"/vm/scenario/stage{n}", script, mode=0o755)

    def file(self, path: str, data: Union[bytes, str], mode: int = 0o644) -> None:
        self._mutable()
        self.layer.data(path, data, mode)

    def host_file(self, path: str, host: PathLike, mode: int = 0o644) -> None:
        self._mutable()
        self.layer.file(path, host, mode)

    def embed(self, path: str, host: PathLike, mode: int = 0o644) -> None:
        """A (big) file only in the booted initramfs, not in /vm/initrd.img."""
        self.embedded.file(path, host, mode)

    def _mutable(self) -> None:
        if self._inner is not None:
            raise RuntimeError("the scenario layer is frozen once initrd() was built")

    def initrd(self) -> Path:
        """base + pykexec + scenario: what the guest sees as /vm/initrd.img (host path)."""
        if self._inner is None:
            for d, mode in (("/proc", 0o755), ("/sys", 0o755), ("/dev", 0o755), ("/tmp", 0o1777),
                            ("/run", 0o755), ("/root", 0o700), ("/mnt", 0o755)):
                self.layer.dir(d, mode)
            self.layer.chardev("/dev/console", 5, 1)
            self.layer.data("/init", self.init_text or INIT, mode=0o755)
            self.layer.data("/vm/lib.sh", LIB_SH)
            scen = self.layer.write_file(self.dir / "scenario.cpio.gz", compress=True)
            parts = [*self.layers(), scen]
            self._inner = atomic_write(self.dir / "initrd.img", lambda f: concat(parts, f))
        return self._inner

    def layers(self) -> list:
        """The cached archives under the scenario layer (the arm64 guest has its own)."""
        return [base_layer(), pykexec_layer()]

    def archive(self, path: str, files: dict, *, compress: Union[bool, str] = False) -> Path:
        """Put a separate archive, made of ``{guest path: bytes|str}``, at ``path`` in the
        scenario layer (e.g. to append to /vm/initrd.img for stage 2); returns its host path."""
        host = self.build_archive("archive" + path.replace("/", "_"), files, compress=compress)
        self.host_file(path, host)
        return host

    def build_archive(self, name: str, files: dict, *, compress: Union[bool, str] = False) -> Path:
        """An archive of ``{guest path: bytes|str}`` written to the run directory (host only)."""
        c = Cpio()
        for p, data in files.items():
            c.data(p, data)
        return c.write_file(self.dir / name, compress=compress)

    def boot(self, append: str = "", *, memory: int = DEFAULT_MEMORY, timeout: float = DEFAULT_TIMEOUT,
             kernel: Optional[PathLike] = None, quiet: bool = True, embed_initrd: bool = True,
             extra_args: Sequence[str] = (), until: Optional[str] = None) -> Serial:
        """Boot once.  ``extra_args`` go to QEMU as they are (e.g. UEFI firmware as pflash);
        ``until`` ends the run at that console text (:func:`run_qemu`), for a next image that
        never powers off."""
        inner = self.initrd()
        boot_kernel = Path(kernel) if kernel is not None else self.kernel
        self.embedded.file(GUEST_VMLINUZ, boot_kernel)
        if embed_initrd:
            self.embedded.file(GUEST_INITRD, inner)
        emb = self.embedded.write_file(self.dir / "embed.cpio", compress=False)
        full = atomic_write(self.dir / "boot-initrd.img", lambda f: concat([inner, emb], f))
        cmdline = " ".join(w for w in ["console=ttyS0", "panic=-1", "quiet" if quiet else "", append] if w)
        return run_qemu(kernel=boot_kernel, initrd=full, append=cmdline, memory=memory, timeout=timeout,
                        log_path=self.dir / "serial.log", scenario=self.scenario, extra_args=extra_args,
                        until=until)


def concat(parts: Sequence[Path], out: BinaryIO) -> None:
    """Archives one after the other into ``out`` (the kernel unpacks them in order)."""
    for p in parts:
        with open(p, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
        # keep each archive 4-byte aligned for the kernel's unpacker
        out.write(b"\0" * (-out.tell() % 4))


def concat_file(path: Path, parts: Sequence[Path]) -> Path:
    return atomic_write(path, lambda f: concat(parts, f))


def busybox_initramfs(g: "Guest", stage: int, script: str, *, files: Optional[dict] = None,
                      applets: Optional[Sequence[str]] = None,
                      busybox: Optional[PathLike] = None) -> Path:
    """A gzip'd newc initramfs of static busybox alone that runs ``script`` as ``stage``.

    For images that carry their own initrd (a UKI's .initrd), where the base
    layer's Python would make them large.  ``applets`` are linked in /bin;
    without them every applet busybox lists, at its own path.  ``files`` maps
    guest paths to contents.  ``busybox``: another architecture's static
    busybox (a host file, put at /bin/busybox; ``applets`` must then be given,
    as it cannot run here to list them).
    """
    c = Cpio()
    for d in ("/bin", "/sbin", "/usr/bin", "/usr/sbin", "/lib", "/lib64"):
        if os.path.islink(d):          # merged /usr: keep the links the guest expects
            c.host_path(d)
    if busybox is not None:
        if applets is None:
            raise ValueError("busybox_initramfs(busybox=...) needs applets=")
        c.file("/bin/busybox", busybox, mode=0o755)
        busybox = "/bin/busybox"
    else:
        busybox = host_tools()["busybox"]
        c.host_path(busybox)
    if applets is None:
        listed = subprocess.run([busybox, "--list-full"], stdout=subprocess.PIPE, text=True,
                                check=True).stdout.split()
        links = ["/" + rel for rel in listed if "/" in rel and canon("/" + rel) != canon(busybox)]
    else:
        links = [f"/bin/{a}" for a in applets]
    for link in links:
        c.symlink(link, busybox)
    for d, mode in (("/proc", 0o755), ("/sys", 0o755), ("/dev", 0o755), ("/tmp", 0o1777),
                    ("/run", 0o755), ("/root", 0o700)):
        c.dir(d, mode)
    c.chardev("/dev/console", 5, 1)
    c.data("/init", INIT, mode=0o755)
    c.data("/vm/lib.sh", LIB_SH)
    c.data("/vm/scenario/name", g.scenario + "\n")
    c.data(f"/vm/scenario/stage{stage}", script, mode=0o755)
    for path, data in (files or {}).items():
        c.data(path, data)
    return c.write_file(g.dir / f"stage{stage}-busybox.cpio.gz", compress=True)


def prepare() -> dict:
    """Fetch/build everything shared by all scenarios (for a warm-up or CI pre-step)."""
    t0 = time.monotonic()
    out = {"kernel": kernel(), "base": base_layer(), "pykexec": pykexec_layer()}
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out


def pykexec_has(*argv: str) -> bool:
    """True if ``pykexec ARGV --help`` succeeds on the host (a subcommand/flag exists)."""
    proc = subprocess.run([sys.executable, "-m", "pykexec", *argv, "--help"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    return proc.returncode == 0


def pykexec_help(*argv: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "pykexec", *argv, "--help"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    return proc.stdout if proc.returncode == 0 else ""


if __name__ == "__main__":  # python -m tests.vm.harness: warm the cache and boot a smoke test
    logging.basicConfig(level=logging.INFO)
    print(prepare())
    g = Guest("smoke")
    g.stage(1, sh_script("""
mark uname "$(uname -r)"
run py {python} -c 'import ctypes, zlib, lzma, hashlib, zstandard, lz4.frame, lzo, pefile, elftools; print("ok")'
run pyk pykexec --version
run kt /opt/kexec-tools/sbin/kexec --version
""".format(python=GUEST_PYTHON)))
    s = g.boot()
    print("\n".join(f"{n} {v}" for n, v in s.marks))


# --------------------------------------------------------------------------
# pieces the scenarios share

#: stage 2 of most scenarios: report the command line and the stage-2-only token
STAGE2_REPORT = sh_script("""
mark cmdline "$(cat /proc/cmdline)"
if [ -f /vm/token ]; then mark token "$(cat /vm/token)"; else mark token "(no /vm/token)"; fi
mark kernel "$(uname -r)"
""")


def token() -> str:
    """A random token for markers and stage-2-only files."""
    import secrets
    return secrets.token_hex(8)


def add_token_archive(g: Guest, value: str, path: str = "/vm/token.cpio", extra: Optional[dict] = None) -> None:
    """A small archive at ``path`` holding /vm/token = value (stage 1 appends it to the stage-2 initrd)."""
    g.archive(path, {"/vm/token": value + "\n", **(extra or {})})


def expect_stage2(serial: Serial, *, cmdline: Optional[str] = None, token_value: Optional[str] = None) -> None:
    """Stage 2 began and ended cleanly, with this exact cmdline and token."""
    serial.expect_in_order("stage-begin 1", "stage-begin 2", "stage-end 2 rc=0")
    if cmdline is not None:
        got = serial.value("cmdline")
        if got.strip() != cmdline:
            serial.fail(f"stage 2 /proc/cmdline is {got!r}, expected {cmdline!r}")
    if token_value is not None:
        got = serial.value("token")
        if got.strip() != token_value:
            serial.fail(f"stage 2 /vm/token is {got!r}, expected {token_value!r}")


def expect_ok(serial: Serial, name: str) -> None:
    """``run NAME ...`` exited 0."""
    if serial.values(name + ".rc") != ["0"]:
        serial.fail(f"command failed:\n{serial.command(name)}")


def expect_usage_error(serial: Serial, name: str) -> None:
    """``run NAME pykexec ...`` failed with exit code 2 and exactly one ``pykexec: error:`` line."""
    err = serial.values(name + ".err")
    if serial.values(name + ".rc") != ["2"] or len(err) != 1 or not err[0].startswith("pykexec: error:"):
        serial.fail(f"expected exit 2 and one 'pykexec: error:' line:\n{serial.command(name)}")


def status_json(serial: Serial, name: str) -> dict:
    """The JSON printed by ``run NAME pykexec status --json``."""
    expect_ok(serial, name)
    text = serial.lines(name + ".out")
    try:
        return json.loads(text)
    except ValueError:
        serial.fail(f"`pykexec status --json` printed no JSON:\n{serial.command(name)}")
        raise
