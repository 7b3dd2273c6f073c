"""Real boot images for the tests: fetched from Debian, built, and cached.

Plain functions, no pytest at import time.  Every public function returns a
``pathlib.Path`` (``arm64_zboot`` returns a pair; ``arm64_closure`` and
``packages_of`` describe the arm64 guest's packages) and raises ``RuntimeError``
with a message that says what could not be fetched or built.  Tests that use
this material must fail, never skip, when it is missing.

Nothing is committed to the repository: everything lives in the cache,
``~/.cache/pykexec-tests/`` or ``$PYKEXEC_TEST_CACHE``.  Cache layout::

    apt/system/                 apt's binary caches and memoised version look-ups
                                for the system's own sources (read-only use)
    apt/sid/, apt/<codename>-arm64/
                                private apt configurations: sources.list (the
                                system's Debian mirror), lists/, cache/, empty
                                status and preferences.  sid: amd64 + arm64;
                                <codename>-arm64: arm64 packages of the
                                system's own suite; trixie-arm64: trixie's
                                arm64 packages (the arm64 guest's userland)
    deb/<pkg>_<version>_<arch>/ the members needed from one .deb (the .deb is
                                not kept), e.g. boot/vmlinuz-*; linux-source
                                is unpacked there as linux/ (the kernel tree)
    derived/Image.gz_<pkg>_<version>_<arch>/
                                files computed from a package (Image.gz)
    build/zboot-arm64_<linux-source key>/
                                the one arm64 build tree (make O=...)
    zboot/arm64_<linux-source key>_<compression>/
                                Image + vmlinuz.efi (+ the .config) per compression
    zboot/arm64-debian_<pkg>_<linux-source key>_<compression>/
                                the same, wrapping Debian's arm64 Image
    build/kbuild-<name>_<arch>_<linux-source key>/
                                a scenario kernel's build tree (kernel_build())
    kbuild/<name>_<arch>_<linux-source key>_<config hash>/
                                its image + .config, per configuration
    arm64/<kind>_<hash>/root    an arm64 guest tree: trixie packages merged into
                                one merged-/usr root (files hard-linked from
                                deb/), keyed by every package and version
                                (listed in packages.txt beside root/)
    locks/                      fcntl lock files, one per cache entry
    tmp/                        staging; finished work is renamed into place

Every key includes the Debian package version, so a new upload gives a new
entry.  Versions are resolved from the apt lists already on disk; private
lists are fetched when missing and refreshed when a download fails (the
version is gone from the mirror).  PYKEXEC_TEST_LATEST=1 refreshes every
list, the system's too, once per process: every package then resolves to
the archive's newest candidate, which is how the suite is run against newer
builds on purpose.

Packages are only ever downloaded (``apt-get download``) and unpacked
(``dpkg-deb``); nothing from sid is installed and /etc/apt is never written.
The only installs are build tools from the system's own suite, for the arm64
zboot build (``gcc-aarch64-linux-gnu``, ``flex``, ``bison``, ...).
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Mapping, Optional, Sequence, Union

__all__ = [
    "ZBOOT_COMPRESSIONS",
    "ZBOOT_HEADER_NAMES",
    "cache_root",
    "package_of",
    "bookworm_cloud_bzimage",
    "bookworm_signed_bzimage",
    "sid_cloud_bzimage",
    "arm64_image",
    "arm64_image_gz",
    "systemd_stub",
    "ukify",
    "build_uki",
    "build_addon",
    "linux_source_tree",
    "kernel_build",
    "extract_vmlinux_script",
    "arm64_zboot",
    "arm64_zboot_debian",
    "xen_hypervisor_gz",
    "xenserver_xen",
    "ipxe_lkrn",
    "FOREIGN_KERNELS",
    "foreign_kernel",
    "sid_arm64_image",
    "sid_arm64_16k_image",
    "sid_arm64_config",
    "ARM64_PYTHON_ROOTS",
    "ARM64_KEXEC_TOOLS_ROOTS",
    "arm64_closure",
    "arm64_python_tree",
    "arm64_kexec_tools_tree",
    "arm64_busybox",
    "packages_of",
    "fetch_all",
]

#: compression name accepted by arm64_zboot() -> Kconfig symbol suffix
ZBOOT_COMPRESSIONS = {
    "gzip": "GZIP",
    "lz4": "LZ4",
    "lzma": "LZMA",
    "lzo": "LZO",
    "xz": "XZ",
    "zstd": "ZSTD",
}

#: compression name -> the string the kernel writes into the zboot header
ZBOOT_HEADER_NAMES = {
    "gzip": "gzip",
    "lz4": "lz4",
    "lzma": "lzma",
    "lzo": "lzo",
    "xz": "xzkern",
    "zstd": "zstd22",
}

PathLike = Union[str, "os.PathLike[str]"]

_SYSTEM = "system"
_SID = "sid"
#: sid's kernels for architectures pykexec does not load (riscv64, armhf, ppc64el): issue #20's
#: "foreign architecture" images, from their own lists so that sid's stay small
_SID_FOREIGN = "sid-foreign"
FOREIGN_KERNELS = {"riscv64": "linux-image-riscv64", "armhf": "linux-image-armmp",
                   "ppc64el": "linux-image-powerpc64le"}
#: trixie's arm64 packages (the arm64 guest's userland: Python 3.13 and the
#: python3-* packages built for it; sid has moved on to 3.14)
_TRIXIE_ARM64 = "trixie-arm64"


# --------------------------------------------------------------------------
# basics


def cache_root() -> Path:
    """The cache directory (created on demand)."""
    env = os.environ.get("PYKEXEC_TEST_CACHE")
    root = Path(env) if env else Path.home() / ".cache" / "pykexec-tests"
    root = root.expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _log(msg: str) -> None:
    print(f"material: {msg}", file=sys.stderr, flush=True)


def _fail(msg: str) -> "RuntimeError":
    return RuntimeError(f"test material unavailable: {msg}")


def _run(
    cmd: Sequence[PathLike],
    *,
    what: str,
    cwd: Optional[PathLike] = None,
    env: Optional[Mapping[str, str]] = None,
    timeout: Optional[float] = 3600,
    capture: bool = True,
) -> subprocess.CompletedProcess:
    argv = [os.fspath(c) for c in cmd]
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            env=None if env is None else dict(env),
            stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )
    except FileNotFoundError as e:
        raise _fail(f"{what}: command not found: {argv[0]} ({e})") from None
    except subprocess.TimeoutExpired:
        raise _fail(f"{what}: timed out after {timeout}s: {' '.join(argv)}") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        tail = "\n    ".join(err[-25:])
        raise _fail(f"{what}: `{' '.join(argv)}` exited {proc.returncode}:\n    {tail}")
    return proc


_held: dict = {}
_refreshed: set = set()


def _latest() -> bool:
    """PYKEXEC_TEST_LATEST=1: refresh every apt list once per process, so that each
    package resolves to the archive's newest candidate (cache entries are keyed by
    version, so older builds in the cache are simply not used)."""
    return os.environ.get("PYKEXEC_TEST_LATEST") == "1"


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    """An exclusive fcntl lock shared between processes (re-entrant within one)."""
    if name in _held:
        _held[name] += 1
        try:
            yield
        finally:
            _held[name] -= 1
        return
    d = cache_root() / "locks"
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / (_safe(name) + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"waiting for another process holding lock {name!r}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        _held[name] = 1
        try:
            yield
        finally:
            del _held[name]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _safe(s: str) -> str:
    """A version or package name made safe for a file name (keeps it readable)."""
    return re.sub(r"[^A-Za-z0-9.+~_-]", lambda m: "%%%02x" % ord(m.group()), s)


def _staging(prefix: str) -> Path:
    d = cache_root() / "tmp"
    d.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=_safe(prefix) + ".", dir=d))


def _publish(staged: Path, final: Path) -> None:
    """Move a finished staging directory into place (atomic rename)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        shutil.rmtree(final)
    os.rename(staged, final)


def _done(d: Path) -> bool:
    return (d / ".complete").exists()


def _mark_done(d: Path) -> None:
    (d / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))


# --------------------------------------------------------------------------
# the system's apt sources, and private apt configurations


def _os_release() -> dict:
    out = {}
    for p in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            text = Path(p).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                out[k.strip()] = v.strip().strip('"')
        break
    return out


def _codename() -> str:
    code = _os_release().get("VERSION_CODENAME")
    if not code:
        raise _fail("cannot tell the system's Debian codename from /etc/os-release")
    return code


def _system_sources() -> list:
    """Entries of the system's apt sources: dicts with uris, suites, components, options."""
    entries = []
    etc = Path("/etc/apt")
    files = []
    if (etc / "sources.list").is_file():
        files.append(etc / "sources.list")
    if (etc / "sources.list.d").is_dir():
        files += sorted((etc / "sources.list.d").iterdir())
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        if f.name.endswith(".list"):
            for line in text.splitlines():
                line = line.split("#", 1)[0].strip()
                m = re.match(r"^deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
                if not m:
                    continue
                opts = {}
                for o in (m.group(1) or "").split():
                    if "=" in o:
                        k, v = o.split("=", 1)
                        opts[k.lower()] = v
                entries.append(
                    {
                        "uris": [m.group(2)],
                        "suites": [m.group(3)],
                        "components": m.group(4).split(),
                        "signed-by": opts.get("signed-by"),
                    }
                )
        elif f.name.endswith(".sources"):
            for para in re.split(r"\n\s*\n", text):
                fields = {}
                key = None
                for line in para.splitlines():
                    if line.startswith("#"):
                        continue
                    if line[:1] in (" ", "\t") and key:
                        fields[key] += "\n" + line.strip()
                    elif ":" in line:
                        key, v = line.split(":", 1)
                        key = key.strip().lower()
                        fields[key] = v.strip()
                if "deb" not in fields.get("types", "").split():
                    continue
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                signed = fields.get("signed-by")
                if signed and "\n" in signed:
                    signed = None  # an inline key cannot go into a one-line entry
                entries.append(
                    {
                        "uris": fields.get("uris", "").split(),
                        "suites": fields.get("suites", "").split(),
                        "components": fields.get("components", "").split(),
                        "signed-by": signed,
                    }
                )
    return entries


def _suite_lines(arch: str) -> list:
    """One-line entries for the system's own suite(s), restricted to ``arch``."""
    code = _codename()
    lines = []
    for e in _system_sources():
        for uri in e["uris"]:
            for suite in e["suites"]:
                if suite == code or suite.startswith(code + "-"):
                    lines.append(_one_line(uri, suite, e["components"], e["signed-by"], arch))
    if not lines:
        raise _fail(f"no apt source for {code} found in /etc/apt/sources.list(.d)")
    return lines


def _one_line(uri: str, suite: str, components: Sequence[str], signed_by, arch: str) -> str:
    opts = [f"arch={arch}"]
    if signed_by:
        opts.append(f"signed-by={signed_by}")
    return f"deb [{' '.join(opts)}] {uri} {suite} {' '.join(components) or 'main'}"


def _sid_lines() -> list:
    """sid, from the Debian mirror that the system already uses for its own suite."""
    code = _codename()
    for e in _system_sources():
        if code in e["suites"] and "main" in e["components"] and e["uris"]:
            return [_one_line(e["uris"][0], "sid", ["main"], e["signed-by"], "amd64,arm64")]
    raise _fail(
        f"no Debian mirror found in /etc/apt/sources.list(.d) (wanted an entry for {code} main)"
    )


def _sid_foreign_lines() -> list:
    """sid main for the architectures of FOREIGN_KERNELS, from the system's Debian mirror."""
    return [line.replace("arch=amd64,arm64", "arch=" + ",".join(FOREIGN_KERNELS)) for line in _sid_lines()]


def _trixie_arm64_lines() -> list:
    """trixie main (arm64), from the Debian mirror that the system already uses."""
    code = _codename()
    for e in _system_sources():
        if code in e["suites"] and "main" in e["components"] and e["uris"]:
            return [_one_line(e["uris"][0], "trixie", ["main"], e["signed-by"], "arm64")]
    raise _fail(
        f"no Debian mirror found in /etc/apt/sources.list(.d) (wanted an entry for {code} main)"
    )


class _Apt:
    """One apt configuration: the system's own, or a private one under the cache."""

    def __init__(self, name: str):
        self.name = name

    @property
    def private(self) -> bool:
        return self.name != _SYSTEM

    @property
    def dir(self) -> Path:
        return cache_root() / "apt" / self.name

    def _source_lines(self) -> list:
        if self.name == _SID:
            return _sid_lines()
        if self.name == _SID_FOREIGN:
            return _sid_foreign_lines()
        if self.name == _TRIXIE_ARM64 and _codename() != "trixie":
            return _trixie_arm64_lines()
        if self.name.endswith("-arm64"):
            return _suite_lines("arm64")
        raise AssertionError(self.name)

    def opts(self) -> list:
        o = []
        if os.geteuid() == 0:
            # downloads go to our own directories, which _apt may not be able to write
            o += ["-o", "APT::Sandbox::User=root"]
        d = self.dir
        # apt's binary caches, kept with our configuration (the system keeps none)
        o += [
            "-o", f"Dir::Cache::pkgcache={d / 'pkgcache.bin'}",
            "-o", f"Dir::Cache::srcpkgcache={d / 'srcpkgcache.bin'}",
        ]
        if not self.private:
            return o
        return o + [
            "-o", f"Dir::Etc::SourceList={d / 'sources.list'}",
            "-o", "Dir::Etc::SourceParts=-",
            "-o", f"Dir::Etc::Preferences={d / 'preferences'}",
            "-o", f"Dir::Etc::PreferencesParts={d / 'preferences.d'}",
            "-o", f"Dir::State::Lists={d / 'lists'}",
            "-o", f"Dir::State::status={d / 'status'}",
            "-o", f"Dir::Cache={d / 'cache'}",
            *(opt for arch in ("amd64", "arm64", *FOREIGN_KERNELS) for opt in ("-o", f"APT::Architectures::={arch}")),
        ]

    def _setup(self) -> None:
        d = self.dir
        for sub in ("lists/partial", "cache/archives/partial", "preferences.d"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "status").touch()
        text = "\n".join(self._source_lines()) + "\n"
        sl = d / "sources.list"
        if not sl.exists() or sl.read_text() != text:
            sl.write_text(text)
            (d / "updated").unlink(missing_ok=True)

    def ensure_lists(self, refresh: bool = False) -> None:
        latest = _latest() and self.name not in _refreshed
        if not self.private:
            if latest:
                self._update_system_lists()
            return
        with _lock(f"apt-{self.name}"):
            self._setup()
            stamp = self.dir / "updated"
            refresh = refresh or latest
            if refresh:
                _refreshed.add(self.name)
            if stamp.exists() and not refresh:
                return
            _log(f"apt-get update ({self.name} lists)")
            _run(["apt-get", *self.opts(), "-q", "update"], what=f"apt-get update for {self.name}",
                 timeout=900)
            stamp.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))

    def _update_system_lists(self) -> None:
        """``apt-get update`` of the system's own lists (PYKEXEC_TEST_LATEST=1 only)."""
        _refreshed.add(self.name)
        _log("apt-get update (the system's lists: PYKEXEC_TEST_LATEST=1)")
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        _run([*sudo, "apt-get", "-q", "update"], what="apt-get update of the system's lists",
             timeout=900)

    # Resolving versions costs an apt-cache run (~0.3-1.5 s) each; a warm run
    # of fetch-material makes dozens.  Answers are memoised on disk, keyed by
    # the state of the lists and sources they came from.

    def _signature(self) -> str:
        lists = self.dir / "lists" if self.private else Path("/var/lib/apt/lists")
        paths = []
        for d in (lists, Path("/etc/apt/sources.list.d"), Path("/etc/apt/preferences.d")):
            if d.is_dir():
                paths += sorted(p for p in d.iterdir() if p.is_file())
        paths += [Path("/etc/apt/sources.list"), Path("/etc/apt/preferences"), self.dir / "sources.list"]
        h = hashlib.sha256()
        for p in paths:
            try:
                st = p.stat()
            except OSError:
                continue
            h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def _memo(self, kind: str, pkg: str, compute):
        self.ensure_lists()
        self.dir.mkdir(parents=True, exist_ok=True)
        memo_file = self.dir / "resolved.json"
        sig = self._signature()
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, ValueError):
            memo = {}
        if memo.get("signature") != sig:
            memo = {"signature": sig}
        key = f"{kind} {pkg}"
        if key in memo:
            return memo[key]
        value = compute()
        memo[key] = value
        tmp = memo_file.with_name(f"resolved.json.{os.getpid()}")
        tmp.write_text(json.dumps(memo, indent=1, sort_keys=True))
        os.replace(tmp, memo_file)
        return value

    def show(self, pkg: str) -> Optional[dict]:
        """Candidate Version/Architecture/... of ``pkg`` (None if unknown)."""
        return self._memo("show", pkg, lambda: self._show(pkg))

    def depends(self, pkg: str) -> list:
        """Names of the packages that ``pkg`` depends on (virtual ones left out)."""
        return self._memo("depends", pkg, lambda: self._depends(pkg))

    def _show(self, pkg: str) -> Optional[dict]:
        proc = subprocess.run(
            ["apt-cache", *self.opts(), "show", "--no-all-versions", pkg],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        if proc.returncode != 0 or not proc.stdout.strip():
            return None
        fields = {}
        for line in proc.stdout.decode(errors="replace").splitlines():
            if not line.strip():
                break
            if line[:1] not in (" ", "\t") and ":" in line:
                k, v = line.split(":", 1)
                if k in ("Package", "Version", "Architecture", "Source", "Filename", "SHA256"):
                    fields[k] = v.strip()
        return fields if "Version" in fields else None

    def _depends(self, pkg: str) -> list:
        proc = _run(["apt-cache", *self.opts(), "depends", pkg], what=f"apt-cache depends {pkg}")
        out = []
        for line in proc.stdout.decode(errors="replace").splitlines():
            m = re.match(r"^\s*\|?(?:Pre)?Depends:\s*(\S+)", line)
            if m and not m.group(1).startswith("<"):
                out.append(m.group(1))
        return out

    def download(self, spec: str, dest: Path) -> Path:
        self.ensure_lists()
        _run(["apt-get", *self.opts(), "-q", "download", spec], cwd=dest,
             what=f"apt-get download {spec} ({self.name} sources)", timeout=1800)
        debs = sorted(dest.glob("*.deb"))
        if len(debs) != 1:
            raise _fail(f"apt-get download {spec} left {len(debs)} .deb files in {dest}")
        return debs[0]


_APTS: dict = {}


def _apt(name: str) -> _Apt:
    if name not in _APTS:
        _APTS[name] = _Apt(name)
    return _APTS[name]


def _arm64_apt() -> _Apt:
    return _apt(f"{_codename()}-arm64")


# --------------------------------------------------------------------------
# packages


def _fsys_tar(deb: Path, tar_args: Sequence[str], what: str) -> bytes:
    dpkg = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", os.fspath(deb)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tar = subprocess.run(["tar", *tar_args], stdin=dpkg.stdout, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    dpkg.stdout.close()
    dpkg_err = dpkg.stderr.read()
    dpkg.wait()
    if dpkg.returncode != 0:
        raise _fail(f"dpkg-deb --fsys-tarfile {deb.name} failed: {dpkg_err.decode(errors='replace')}")
    if tar.returncode != 0:
        raise _fail(f"{what} ({deb.name}): {tar.stderr.decode(errors='replace').strip()}")
    return tar.stdout


def _deb_extract(deb: Path, dest: Path, members: Optional[Sequence[str]]) -> None:
    """Extract the members of ``deb`` matching any fnmatch pattern (everything if None).

    One streaming pass over ``dpkg-deb --fsys-tarfile`` (kernel packages are
    large: listing first and extracting second would decompress them twice).
    """
    dest.mkdir(parents=True, exist_ok=True)
    if not members:
        _fsys_tar(deb, ["-x", "-f", "-", "-C", os.fspath(dest), "--no-same-owner"], "extracting")
        return
    dpkg = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", os.fspath(deb)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    found = []
    try:
        with tarfile.open(fileobj=dpkg.stdout, mode="r|") as tf:
            for m in tf:
                if m.isdir() or not any(fnmatch.fnmatchcase(m.name, pat) for pat in members):
                    continue
                parts = [p for p in PurePosixPath(m.name).parts if p not in ("", ".", "/")]
                if not parts or ".." in parts:
                    raise _fail(f"{deb.name}: refusing member {m.name!r}")
                target = dest.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                if m.isreg():
                    src = tf.extractfile(m)
                    with open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                    os.chmod(target, m.mode & 0o777)
                elif m.issym():
                    os.symlink(m.linkname, target)
                elif m.islnk():
                    link = dest.joinpath(*[p for p in PurePosixPath(m.linkname).parts if p not in (".", "/")])
                    if not link.is_file():
                        raise _fail(f"{deb.name}: hard link {m.name} -> {m.linkname} not extracted")
                    shutil.copyfile(link, target)
                else:
                    continue
                found.append(m.name)
    except tarfile.TarError as e:
        raise _fail(f"reading {deb.name}: {e}") from None
    finally:
        dpkg.stdout.close()
        err = dpkg.stderr.read()
        dpkg.wait()
    if dpkg.returncode != 0:
        raise _fail(f"dpkg-deb --fsys-tarfile {deb.name} failed: {err.decode(errors='replace')}")
    if not found:
        raise _fail(f"{deb.name} has no member matching {list(members)}")


def _package(
    apt: _Apt,
    pkg: str,
    members: Optional[Sequence[str]] = None,
    post: Optional[callable] = None,
) -> Path:
    """Directory holding the files of ``pkg`` (candidate version) extracted from its .deb.

    ``pkg`` may carry an architecture (``name:arm64``).  ``members`` are
    fnmatch patterns on the archive's member names (``./boot/vmlinuz-*``);
    None extracts everything.  The entry is keyed by package, version and
    architecture only, so every caller must ask one package for the same
    members.  ``post(dir)`` may transform the tree before it is published.
    """
    for attempt in (0, 1):
        info = apt.show(pkg)
        if info is None:
            if apt.private and attempt == 0:
                apt.ensure_lists(refresh=True)
                continue
            hint = "" if apt.private else " (is `apt-get update` needed?)"
            raise _fail(f"package {pkg} is not known to the {apt.name} apt sources{hint}")
        name = pkg.split(":")[0]
        key = f"{name}_{_safe(info['Version'])}_{info.get('Architecture', 'unknown')}"
        final = cache_root() / "deb" / key
        if _done(final):
            return final
        with _lock("deb-" + key):
            if _done(final):
                return final
            stage = _staging(key)
            try:
                _log(f"downloading {name} {info['Version']} ({info.get('Architecture')}, {apt.name})")
                dl = stage / "dl"
                dl.mkdir()
                try:
                    deb = apt.download(f"{pkg}={info['Version']}", dl)
                except RuntimeError as e:
                    if apt.private and attempt == 0:
                        _log(f"download of {pkg} failed; refreshing the {apt.name} lists")
                        apt.ensure_lists(refresh=True)
                        continue
                    if not apt.private:
                        raise _fail(f"{e}\n    (the system's apt lists may be stale: run `apt-get update`)") from None
                    raise
                tree = stage / "tree"
                _deb_extract(deb, tree, members)
                shutil.rmtree(dl)
                if post is not None:
                    post(tree)
                (tree / ".package").write_text(f"{name} {info['Version']} {info.get('Architecture')}\n")
                _mark_done(tree)
                _publish(tree, final)
            finally:
                shutil.rmtree(stage, ignore_errors=True)
            return final
    raise _fail(f"could not download {pkg}")  # pragma: no cover


def package_of(path: PathLike) -> tuple:
    """(package, version, architecture) of the cached .deb a file was extracted from.

    Tests that pin numbers taken from one build's log recognise that build
    by this, never by a header field another build may share.
    """
    for d in Path(path).resolve().parents:
        stamp = d / ".package"
        if stamp.is_file():
            name, version, arch = stamp.read_text().split()
            return name, version, arch
    raise _fail(f"{path} does not come from a cached package")


def _one(tree: Path, pattern: str, what: str) -> Path:
    hits = sorted(p for p in tree.glob(pattern) if p.is_file())
    if len(hits) != 1:
        raise _fail(f"{what}: expected exactly one {pattern} in {tree}, found {[h.name for h in hits]}")
    return hits[0]


def _kernel_package(apt: _Apt, meta: str, arch: Optional[str] = None) -> str:
    """Follow a kernel metapackage to the package that holds boot/vmlinuz-*.

    bookworm: linux-image-cloud-amd64 -> linux-image-6.1.0-N-cloud-amd64.
    sid:      linux-image-cloud-amd64 -> linux-image-7.x...-cloud-amd64
              -> linux-binary-7.x...-cloud-amd64.
    """
    suffix = f":{arch}" if arch else ""
    pkg = meta
    seen = {meta}
    for _ in range(5):
        deps = [d.split(":")[0] for d in apt.depends(pkg + suffix)]
        deps = [d for d in deps if re.match(r"^linux-(image|binary)-\d", d) and d not in seen]
        if not deps:
            break
        binaries = [d for d in deps if d.startswith("linux-binary-")]
        pkg = (binaries or deps)[0]
        seen.add(pkg)
    if pkg == meta:
        raise _fail(f"`apt-cache depends {meta}{suffix}` ({apt.name}) names no versioned kernel package")
    return pkg + suffix


def _vmlinuz(apt: _Apt, meta: str, arch: Optional[str] = None) -> Path:
    pkg = _kernel_package(apt, meta, arch)
    # bookworm ships boot/vmlinuz-<ver>; newer linux-binary-* packages
    # ship usr/lib/modules/<ver>/vmlinuz
    # ppc64el's is an ELF vmlinux, in the same places
    tree = _package(apt, pkg, ["./boot/vmlinu[xz]-*", "./boot/config-*",
                               "./usr/lib/modules/*/vmlinu[xz]", "./usr/lib/modules/*/config"])
    hits = [p for pattern in ("boot/vmlinu[xz]-*", "usr/lib/modules/*/vmlinu[xz]") for p in sorted(tree.glob(pattern))]
    if len(hits) != 1:
        raise _fail(f"{pkg}: expected one kernel image in {tree}, found {hits}")
    return hits[0]


# --------------------------------------------------------------------------
# kernels and other boot images


def bookworm_cloud_bzimage() -> Path:
    """boot/vmlinuz-* of bookworm's linux-image-6.1.0-N-cloud-amd64."""
    return _vmlinuz(_apt(_SYSTEM), "linux-image-cloud-amd64")


def bookworm_signed_bzimage() -> Path:
    """boot/vmlinuz-* of bookworm's linux-image-6.1.0-N-amd64 (signed PE/Authenticode)."""
    return _vmlinuz(_apt(_SYSTEM), "linux-image-amd64")


def sid_cloud_bzimage() -> Path:
    """The newest cloud amd64 kernel of sid (7.x, zstd payload)."""
    return _vmlinuz(_apt(_SID), "linux-image-cloud-amd64", "amd64")


def arm64_image() -> Path:
    """vmlinuz-* of bookworm's linux-image-6.1.0-N-arm64:arm64: an uncompressed Image with a PE header."""
    return _vmlinuz(_arm64_apt(), "linux-image-arm64", "arm64")


def arm64_image_gz() -> Path:
    """arm64_image() compressed with ``gzip -9 -n`` (as Ubuntu ships it)."""
    image = arm64_image()
    key = image.parents[1].name  # deb/<pkg>_<ver>_<arch>
    final = cache_root() / "derived" / f"Image.gz_{key}"
    if _done(final):
        return final / "Image.gz"
    with _lock("derived-" + final.name):
        if not _done(final):
            stage = _staging(final.name)
            try:
                with open(stage / "Image.gz", "wb") as out:
                    proc = subprocess.run(["gzip", "-9", "-n", "-c", os.fspath(image)], stdout=out,
                                          stderr=subprocess.PIPE)
                if proc.returncode != 0:
                    raise _fail(f"gzip -9 -n {image} failed: {proc.stderr.decode(errors='replace')}")
                _mark_done(stage)
                _publish(stage, final)
            finally:
                shutil.rmtree(stage, ignore_errors=True)
    return final / "Image.gz"


def xen_hypervisor_gz() -> Path:
    """boot/xen-4.17-amd64.gz from xen-hypervisor-4.17-amd64 (gzip'd ELF, Multiboot 1 + 2)."""
    tree = _package(_apt(_SYSTEM), "xen-hypervisor-4.17-amd64", ["./boot/xen-*"])
    return _one(tree, "boot/xen-4.17-amd64.gz", "xen-hypervisor-4.17-amd64")


def ipxe_lkrn() -> Path:
    """ipxe.lkrn (a bzImage made by iPXE) from the ipxe package."""
    tree = _package(_apt(_SYSTEM), "ipxe", ["*ipxe.lkrn"])
    return _one(tree, "**/ipxe.lkrn", "ipxe")


# --------------------------------------------------------------------------
# 32-bit boot protocol images: memtest86+ and syslinux's memdisk

def foreign_kernel(arch: str) -> Path:
    """sid's kernel for a Debian architecture pykexec does not load (FOREIGN_KERNELS): riscv64's
    Image (a PE with the RISCV magic), armhf's ARM zImage with its EFI stub, ppc64el's vmlinux."""
    return _vmlinuz(_apt(_SID_FOREIGN), FOREIGN_KERNELS[arch], arch)


def memtest86_bin() -> Path:
    """boot/memtest86+x64.bin from memtest86+: a bzImage (2.12, XLF_KERNEL_64 without
    XLF_CAN_BE_LOADED_ABOVE_4G, not relocatable) that reports on ttyS0 with console=ttyS0."""
    tree = _package(_apt(_SYSTEM), "memtest86+", ["./boot/memtest86+x64.bin"])
    return _one(tree, "boot/memtest86+x64.bin", "memtest86+")


def syslinux_memdisk() -> Path:
    """usr/lib/syslinux/memdisk from syslinux-common: a bzImage of protocol 2.03."""
    tree = _package(_apt(_SYSTEM), "syslinux-common", ["./usr/lib/syslinux/memdisk"])
    return _one(tree, "usr/lib/syslinux/memdisk", "syslinux-common")


__all__ += ["memtest86_bin", "syslinux_memdisk"]


# --------------------------------------------------------------------------
# systemd-boot stubs and ukify


def systemd_stub(suite: str = "bookworm", arch: str = "x64", kind: str = "linux") -> Path:
    """``<kind><arch>.efi.stub`` from systemd-boot-efi of ``suite``.

    suite: "bookworm" (systemd 252, the system's sources) or "sid" (private
    config).  arch: "x64" or "aa64".  kind: "linux" or "addon" (addon stubs
    do not exist in 252; asking for one raises RuntimeError).
    """
    debarch = {"x64": "amd64", "aa64": "arm64"}.get(arch)
    if debarch is None:
        raise ValueError(f"arch must be 'x64' or 'aa64', not {arch!r}")
    if kind not in ("linux", "addon"):
        raise ValueError(f"kind must be 'linux' or 'addon', not {kind!r}")
    if suite == "sid":
        apt = _apt(_SID)
    elif suite == "bookworm":
        if _codename() != "bookworm":
            raise _fail(f"suite 'bookworm' wanted, but the system is {_codename()}")
        apt = _apt(_SYSTEM) if debarch == "amd64" else _arm64_apt()
    else:
        raise ValueError(f"suite must be 'bookworm' or 'sid', not {suite!r}")
    tree = _package(apt, f"systemd-boot-efi:{debarch}", ["./usr/lib/systemd/boot/efi/*"])
    stub = tree / "usr/lib/systemd/boot/efi" / f"{kind}{arch}.efi.stub"
    if not stub.is_file():
        info = (tree / ".package").read_text().strip()
        raise _fail(f"{stub.name} is not shipped in {info} ({suite})")
    return stub


def ukify() -> Path:
    """The ukify script from sid's systemd-ukify.  Run it as ``[sys.executable, ukify(), ...]``."""
    tree = _package(_apt(_SID), "systemd-ukify", ["./usr/bin/ukify"])
    return _one(tree, "usr/bin/ukify", "systemd-ukify")


def _blob_arg(value: Union[None, str, bytes, PathLike], tmp: Path, name: str) -> Optional[str]:
    """A path for ukify: a Path is used as is, str/bytes contents are written to a file."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) and not isinstance(value, Path):
        p = tmp / name
        p.write_bytes(value.encode() if isinstance(value, str) else value)
        return os.fspath(p)
    return os.fspath(value)


def _ukify_run(args: list, what: str) -> None:
    env = dict(os.environ)
    env.setdefault("SOURCE_DATE_EPOCH", "1700000000")
    _run([sys.executable, ukify(), "build", *args], what=what, env=env, timeout=600)


def _profile_text(value: Union[None, str], index: int) -> str:
    return value if value is not None else f"ID=profile{index}\nTITLE=Profile {index}"


def build_uki(
    out: PathLike,
    *,
    linux: PathLike,
    stub: PathLike,
    cmdline: Union[None, str, bytes] = None,
    initrd: Optional[PathLike] = None,
    ucode: Optional[PathLike] = None,
    dtb: Optional[PathLike] = None,
    dtbauto: Sequence[PathLike] = (),
    profiles: Iterable[Mapping] = (),
    osrel: Union[None, str, bytes, PathLike] = None,
    uname: Optional[str] = None,
    profile_stub: Optional[PathLike] = None,
    base_profile: Optional[str] = None,
) -> Path:
    """Build a UKI at ``out`` with sid's ukify.

    ``cmdline`` is the text of .cmdline (str or bytes, written verbatim);
    ``initrd``, ``ucode``, ``dtb`` are files, ``dtbauto`` files for .dtbauto
    sections (ukify ``--devicetree-auto``); ``osrel`` is text or a file
    (default: ukify's default, the host's os-release); ``uname`` the .uname
    text.

    ``profiles``: for a multi-profile UKI, the profiles after the base one.
    ukify makes the base sections (the arguments above) profile 0 (its
    .profile is ``base_profile``, or ukify's default ``ID=main``), and
    ``profiles[i]`` becomes profile ``i + 1``.  Each entry is a mapping with
    optional keys ``cmdline`` (text), ``initrd``, ``ucode``, ``dtb`` (files)
    and ``profile`` (the .profile text; default ``ID=profile<i+1>``).  Each is
    built as a profile PE (``ukify build --profile=...``) and joined with
    ``--join-profile=``.  Profile PEs are built on ``profile_stub``, by
    default the addon stub next to ``stub`` (what ukify itself uses when
    there is no --linux).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="uki.", dir=out.parent) as td:
        tmp = Path(td)
        args = ["--linux", os.fspath(linux), "--stub", os.fspath(stub)]
        c = _blob_arg(cmdline, tmp, "cmdline")
        if c is not None:
            args += ["--cmdline", "@" + c]
        if initrd is not None:
            args += ["--initrd", os.fspath(initrd)]
        if ucode is not None:
            args += ["--microcode", os.fspath(ucode)]
        if dtb is not None:
            args += ["--devicetree", os.fspath(dtb)]
        for auto in dtbauto:
            args += ["--devicetree-auto", os.fspath(auto)]
        o = _blob_arg(osrel, tmp, "os-release")
        if o is not None:
            args += ["--os-release", "@" + o]
        if uname is not None:
            args += ["--uname", uname]
        if base_profile is not None:
            args += ["--profile", base_profile]
        profiles = list(profiles)
        if profiles and profile_stub is None:
            stub_p = Path(stub)
            profile_stub = stub_p.with_name(stub_p.name.replace("linux", "addon", 1))
            if stub_p.name == profile_stub.name or not profile_stub.is_file():
                raise _fail(f"no addon stub next to {stub_p} to build profile PEs; pass profile_stub=")
        for i, prof in enumerate(profiles):
            unknown = set(prof) - {"cmdline", "initrd", "ucode", "dtb", "profile"}
            if unknown:
                raise ValueError(f"unknown profile keys {sorted(unknown)}")
            pargs = ["--stub", os.fspath(profile_stub),
                     "--profile", _profile_text(prof.get("profile"), i + 1)]
            pc = _blob_arg(prof.get("cmdline"), tmp, f"cmdline{i}")
            if pc is not None:
                pargs += ["--cmdline", "@" + pc]
            if prof.get("initrd") is not None:
                pargs += ["--initrd", os.fspath(prof["initrd"])]
            if prof.get("ucode") is not None:
                pargs += ["--microcode", os.fspath(prof["ucode"])]
            if prof.get("dtb") is not None:
                pargs += ["--devicetree", os.fspath(prof["dtb"])]
            ppe = tmp / f"profile{i}.efi"
            _ukify_run([*pargs, "--output", os.fspath(ppe)], what=f"ukify build (profile {i} PE)")
            args += ["--join-profile", os.fspath(ppe)]
        _ukify_run([*args, "--output", os.fspath(out)], what=f"ukify build {out.name}")
    if not out.is_file():
        raise _fail(f"ukify did not write {out}")
    return out


def build_addon(
    out: PathLike,
    *,
    stub: PathLike,
    cmdline: Union[None, str, bytes] = None,
    initrd: Optional[PathLike] = None,
    ucode: Optional[PathLike] = None,
) -> Path:
    """Build a UKI add-on (PE with .cmdline/.initrd/.ucode on an addon stub) at ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="addon.", dir=out.parent) as td:
        tmp = Path(td)
        args = ["--stub", os.fspath(stub)]
        c = _blob_arg(cmdline, tmp, "cmdline")
        if c is not None:
            args += ["--cmdline", "@" + c]
        if initrd is not None:
            args += ["--initrd", os.fspath(initrd)]
        if ucode is not None:
            args += ["--microcode", os.fspath(ucode)]
        _ukify_run([*args, "--output", os.fspath(out)], what=f"ukify build (add-on) {out.name}")
    if not out.is_file():
        raise _fail(f"ukify did not write {out}")
    return out


# --------------------------------------------------------------------------
# kernel source, extract-vmlinux, arm64 zboot


def _untar_source(tree: Path) -> None:
    tarball = _one(tree, "usr/src/linux-source-*.tar.*", "linux-source")
    dest = tree / "unpacked"
    dest.mkdir()
    _log(f"unpacking {tarball.name}")
    _run(["tar", "-x", "-f", os.fspath(tarball), "-C", os.fspath(dest), "--no-same-owner"],
         what=f"untar {tarball.name}")
    shutil.rmtree(tree / "usr")
    tops = [p for p in dest.iterdir() if p.is_dir()]
    if len(tops) != 1 or not (tops[0] / "Makefile").is_file():
        raise _fail(f"unexpected layout of {tarball.name}: {[p.name for p in tops]}")
    os.rename(tops[0], tree / "linux")
    dest.rmdir()


#: Debian's kernel sources, by version: the apt sources that carry each
LINUX_SOURCES = {"6.1": _SYSTEM, "7.2": _SID}


def linux_source_tree(version: str = "6.1") -> Path:
    """Debian's linux-source-<version> unpacked once into the cache; returns the tree's top
    directory, whose parent's name (``linux-source-<version>_<package version>_all``) keys
    every build made from it."""
    tree = _package(_apt(LINUX_SOURCES[version]), f"linux-source-{version}",
                    ["./usr/src/linux-source-*.tar.*"], post=_untar_source)
    top = tree / "linux"
    if not (top / "Makefile").is_file():
        raise _fail(f"{top} is not a kernel source tree")
    return top


def extract_vmlinux_script() -> Path:
    """scripts/extract-vmlinux of linux_source_tree()."""
    p = linux_source_tree() / "scripts" / "extract-vmlinux"
    if not p.is_file():
        raise _fail(f"{p} missing from the kernel source tree")
    return p


_BUILD_TOOLS = {
    # command, or the absolute path of a header: package (system suite)
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
    "make": "make",
    "flex": "flex",
    "bison": "bison",
    "bc": "bc",
    "perl": "perl",
    "gzip": "gzip",
    "lz4": "lz4",
    "lzma": "xz-utils",
    "xz": "xz-utils",
    "lzop": "lzop",
    "zstd": "zstd",
    "gcc": "gcc",
    "/usr/include/gelf.h": "libelf-dev",  # x86's objtool
}


def _missing_build_tools() -> list:
    """The packages of :data:`_BUILD_TOOLS` whose command (or, for a path, file) is absent."""
    return sorted({pkg for what, pkg in _BUILD_TOOLS.items()
                   if not (Path(what).exists() if what.startswith("/") else shutil.which(what))})


def _ensure_build_tools() -> None:
    missing = _missing_build_tools()
    if not missing:
        return
    with _lock("apt-install"):
        missing = _missing_build_tools()
        if not missing:
            return
        if os.geteuid() != 0:
            raise _fail(f"build tools missing and not root to install them: apt-get install {' '.join(missing)}")
        _log(f"apt-get install {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
             what="installing build tools", env=env, timeout=1800)


def _kconfig(build: Path) -> dict:
    out = {}
    for line in (build / ".config").read_text().splitlines():
        m = re.match(r"^(CONFIG_\w+)=(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def _kbuild_env() -> dict:
    """The environment of a reproducible kernel build (no ARCH or CROSS_COMPILE: make gets them)."""
    return dict(
        {k: v for k, v in os.environ.items() if k not in ("ARCH", "CROSS_COMPILE")},
        KBUILD_BUILD_TIMESTAMP="Thu Jan  1 00:00:00 UTC 2026",
        KBUILD_BUILD_USER="pykexec",
        KBUILD_BUILD_HOST="material",
        KBUILD_BUILD_VERSION="1",
        LC_ALL="C",
    )


def _zboot_env() -> dict:
    return dict(_kbuild_env(), ARCH="arm64", CROSS_COMPILE="aarch64-linux-gnu-")


def _zboot_build(src: Path, compression: str) -> tuple:
    """Configure the shared arm64 build tree for ``compression`` and make Image + vmlinuz.efi.

    Call with the zboot-build lock held.  Returns ``(build, make, env)``.
    """
    _ensure_build_tools()
    build = cache_root() / "build" / f"zboot-arm64_{src.parent.name}"
    build.mkdir(parents=True, exist_ok=True)
    env = _zboot_env()
    make = ["make", "-C", os.fspath(src), f"O={build}", "ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-"]
    config = ["bash", os.fspath(src / "scripts" / "config"), "--file", os.fspath(build / ".config")]
    base = build / ".pykexec-base-config"
    if not base.exists() or not (build / ".config").exists():
        _log("arm64 zboot: make tinyconfig")
        _run([*make, "tinyconfig"], what="make tinyconfig (arm64)", env=env)
        _run([*config, "-e", "64BIT", "-e", "EFI", "-e", "EFI_STUB", "-e", "EFI_ZBOOT"],
             what="scripts/config (EFI)", env=env)
        base.write_text("tinyconfig + 64BIT EFI EFI_STUB EFI_ZBOOT\n")
    sym = ZBOOT_COMPRESSIONS[compression]
    args = []
    for other in ZBOOT_COMPRESSIONS.values():
        if other != sym:
            args += ["-d", f"KERNEL_{other}"]
    args += ["-e", f"KERNEL_{sym}"]
    _run([*config, *args], what=f"scripts/config (KERNEL_{sym})", env=env)
    _run([*make, "olddefconfig"], what="make olddefconfig (arm64)", env=env)
    cfg = _kconfig(build)
    want = ["CONFIG_64BIT", "CONFIG_EFI", "CONFIG_EFI_STUB", "CONFIG_EFI_ZBOOT", f"CONFIG_KERNEL_{sym}"]
    bad = [w for w in want if cfg.get(w) != "y"]
    others = [f"CONFIG_KERNEL_{o}" for o in ZBOOT_COMPRESSIONS.values()
              if o != sym and cfg.get(f"CONFIG_KERNEL_{o}") == "y"]
    if bad or others:
        raise _fail(f"arm64 zboot config: not set: {bad}; also set: {others}")
    _log(f"arm64 zboot: make -j3 Image vmlinuz.efi (KERNEL_{sym})")
    _run([*make, "-j3", "Image", "vmlinuz.efi"], what=f"make Image vmlinuz.efi ({compression})",
         env=env, timeout=3600)
    return build, make, env


def _publish_zboot(final: Path, efi: Path, image: Path, config: Path) -> None:
    stage = _staging(final.name)
    try:
        shutil.copyfile(image, stage / "Image")
        shutil.copyfile(efi, stage / "vmlinuz.efi")
        shutil.copyfile(config, stage / "config")
        _mark_done(stage)
        _publish(stage, final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def arm64_zboot(compression: str = "gzip") -> tuple:
    """A real arm64 EFI zboot kernel built from linux_source_tree().

    Returns ``(vmlinuz_efi, image)``: the zboot PE and the build's
    arch/arm64/boot/Image, which is what unpacking must reproduce.
    compression: gzip, lz4, lzma, lzo, xz or zstd.  One build tree is shared,
    so after the first build (~2 min) another compression only redoes the
    compression step.
    """
    if compression not in ZBOOT_COMPRESSIONS:
        raise ValueError(f"compression must be one of {sorted(ZBOOT_COMPRESSIONS)}, not {compression!r}")
    src = linux_source_tree()
    srckey = src.parent.name  # linux-source-6.1_<ver>_all
    final = cache_root() / "zboot" / f"arm64_{srckey}_{compression}"
    if _done(final):
        return final / "vmlinuz.efi", final / "Image"
    with _lock("zboot-build-" + srckey):
        if _done(final):
            return final / "vmlinuz.efi", final / "Image"
        t0 = time.monotonic()
        build, _make, _env = _zboot_build(src, compression)
        boot = build / "arch" / "arm64" / "boot"
        image, efi = boot / "Image", boot / "vmlinuz.efi"
        if not image.is_file() or not efi.is_file():
            raise _fail(f"the arm64 build left no Image/vmlinuz.efi in {boot}")
        _publish_zboot(final, efi, image, build / ".config")
        _log(f"arm64 zboot ({compression}) built in {time.monotonic() - t0:.0f}s")
    return final / "vmlinuz.efi", final / "Image"


def arm64_zboot_debian(compression: str = "gzip", image: Optional[PathLike] = None) -> tuple:
    """A zboot whose payload is Debian's own arm64 Image (``image``, default arm64_image(), ~35 MiB,
    or one kernel_build() made).

    The kernel's zboot rules (drivers/firmware/efi/libstub/Makefile.zboot) wrap
    whatever arch/arm64/boot/Image holds, so the build tree of arm64_zboot() wraps
    Debian's Image instead of its tinyconfig one: compress it, append its size,
    link with the tree's zboot header and stub.  A zboot of a distribution-sized
    kernel, where arm64_zboot()'s 1.7 MiB payload measures mostly process
    start-up.  Returns ``(vmlinuz_efi, image)`` like arm64_zboot().
    """
    if compression not in ZBOOT_COMPRESSIONS:
        raise ValueError(f"compression must be one of {sorted(ZBOOT_COMPRESSIONS)}, not {compression!r}")
    debian = Path(image) if image is not None else arm64_image()
    src = linux_source_tree()
    srckey = src.parent.name
    # an Image of kernel_build() is keyed by its build (source version and configuration hash)
    built = debian.resolve().parent
    package = (built.name if built.parent == (cache_root() / "kbuild").resolve()
               else _safe("_".join(package_of(debian))))
    final = cache_root() / "zboot" / f"arm64-debian_{package}_{srckey}_{compression}"
    if _done(final):
        return final / "vmlinuz.efi", final / "Image"
    with _lock("zboot-build-" + srckey):
        if _done(final):
            return final / "vmlinuz.efi", final / "Image"
        build, make, env = _zboot_build(src, compression)
        boot = build / "arch" / "arm64" / "boot"
        image = boot / "Image"
        try:
            # newer than vmlinux, so make keeps it; the size suffix is computed from the file
            shutil.copyfile(debian, image)
            _run([*make, "vmlinuz.efi"], what=f"make vmlinuz.efi around Debian's Image ({compression})",
                 env=env, timeout=1800)
            if image.read_bytes() != debian.read_bytes():
                raise _fail("make rebuilt arch/arm64/boot/Image instead of wrapping Debian's")
            _publish_zboot(final, boot / "vmlinuz.efi", debian, build / ".config")
        finally:
            image.unlink(missing_ok=True)  # the next build remakes the tree's own Image and all after it
    return final / "vmlinuz.efi", final / "Image"


# --------------------------------------------------------------------------
# kernels built from Debian's source for the VM scenarios: tinyconfig plus what
# the harness's guest needs plus what the scenario tests


#: what every guest of tests/vm needs from a tinyconfig kernel: a serial console,
#: the initramfs layers (gzip or zstd), /init's mounts, and the system calls
#: CPython, busybox and pykexec make; IKCONFIG_PROC, so that ``pykexec machine``
#: reads the kernel's configuration as on a distribution kernel
GUEST_CONFIG = (
    "64BIT", "SMP", "PRINTK", "TTY", "BLK_DEV_INITRD", "RD_GZIP", "RD_ZSTD", "BINFMT_ELF",
    "BINFMT_SCRIPT", "DEVTMPFS", "PROC_FS", "PROC_SYSCTL", "SYSFS", "DEBUG_FS", "TMPFS", "SHMEM",
    "EXPERT", "MULTIUSER", "FUTEX", "EPOLL", "SIGNALFD", "TIMERFD", "EVENTFD", "POSIX_TIMERS",
    "FILE_LOCKING", "ADVISE_SYSCALLS", "MEMFD_CREATE", "UNIX", "NET", "IKCONFIG", "IKCONFIG_PROC",
    "KEXEC", "KEXEC_FILE", "CRASH_DUMP", "PROC_KCORE", "RELOCATABLE",
)

#: per architecture: make's ARCH and CROSS_COMPILE, the image target and where it lands,
#: and the console and power-off the guest uses
KBUILD_ARCHES = {
    "x86_64": {"make": ["ARCH=x86_64"], "target": "bzImage", "image": "arch/x86/boot/bzImage",
               "config": ("SERIAL_8250", "SERIAL_8250_CONSOLE", "ACPI")},
    "arm64": {"make": ["ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-"], "target": "Image",
              "image": "arch/arm64/boot/Image",
              # SUSPEND: arm64's KEXEC depends on PM_SLEEP_SMP, so on PM_SLEEP
              "config": ("SERIAL_AMBA_PL011", "SERIAL_AMBA_PL011_CONSOLE", "ARM_PSCI_FW", "SUSPEND")},
}


def kernel_build(name: str, arch: str, enable: Sequence[str], *, source: str = "7.2",
                 values: Mapping[str, str] = {}) -> tuple:
    """A kernel built from Debian's linux-source-``source`` for a VM scenario.

    The configuration is tinyconfig + :data:`GUEST_CONFIG` + the architecture's console
    + ``enable`` (symbols without ``CONFIG_``) + ``values`` (symbol -> value); a symbol
    that olddefconfig drops (an unmet dependency) fails the build with its name.  Cached
    as ``kbuild/<name>_<arch>_<source key>_<hash of the configuration>``; the build tree
    (``build/kbuild-<name>_<arch>_<source key>``) is kept, so a changed configuration
    recompiles only what it touches.  Returns ``(image, config)``: the bootable image
    (bzImage, or arm64's Image) and its ``.config``.
    """
    spec = KBUILD_ARCHES[arch]
    src = linux_source_tree(source)
    symbols = (*GUEST_CONFIG, *spec["config"], *enable)
    digest = hashlib.sha256(json.dumps([symbols, sorted(values.items())]).encode()).hexdigest()[:12]
    tree = f"{name}_{arch}_{src.parent.name}"
    final = cache_root() / "kbuild" / f"{tree}_{digest}"
    if _done(final):
        return final / "image", final / "config"
    with _lock("kbuild-" + tree):
        if _done(final):
            return final / "image", final / "config"
        t0 = time.monotonic()
        _ensure_build_tools()
        build = cache_root() / "build" / f"kbuild-{tree}"
        build.mkdir(parents=True, exist_ok=True)
        env = _kbuild_env()
        make = ["make", "-C", os.fspath(src), f"O={build}", *spec["make"]]
        config = ["bash", os.fspath(src / "scripts" / "config"), "--file", os.fspath(build / ".config")]
        _log(f"kernel {name} ({arch}): make tinyconfig")
        _run([*make, "tinyconfig"], what=f"make tinyconfig ({name}, {arch})", env=env)
        edits = [a for s in symbols for a in ("-e", s)]
        edits += [a for k, v in values.items() for a in ("--set-val", k, v)]
        _run([*config, *edits], what=f"scripts/config ({name})", env=env)
        _run([*make, "olddefconfig"], what=f"make olddefconfig ({name}, {arch})", env=env)
        got = _kconfig(build)
        dropped = [s for s in symbols if got.get(f"CONFIG_{s}") != "y"]
        dropped += [k for k, v in values.items() if got.get(f"CONFIG_{k}") != v]
        if dropped:
            raise _fail(f"kernel {name} ({arch}): olddefconfig dropped {dropped} (unmet dependencies)")
        jobs = str((os.cpu_count() or 1) + 1)
        _log(f"kernel {name} ({arch}): make -j{jobs} {spec['target']}")
        _run([*make, f"-j{jobs}", spec["target"]], what=f"make {spec['target']} ({name}, {arch})",
             env=env, timeout=3600)
        stage = _staging(final.name)
        try:
            shutil.copyfile(build / spec["image"], stage / "image")
            shutil.copyfile(build / ".config", stage / "config")
            _mark_done(stage)
            _publish(stage, final)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        _log(f"kernel {name} ({arch}) built in {time.monotonic() - t0:.0f}s")
    return final / "image", final / "config"


# -- the arm64 KEXEC_FILE kernel (tests/vm/test_arm64_file.py) ---------------------

#: its symbols beyond GUEST_CONFIG and arm64's console: sysrq-c panics the guest for kdump,
#: and the capture kernel reads /proc/vmcore
ARM64_FILE_KERNEL_CONFIG = ("MAGIC_SYSRQ", "PROC_VMCORE")


def arm64_file_kernel() -> tuple:
    """``(image, config)`` of an arm64 kernel with KEXEC_FILE, which no Debian arm64 kernel
    has: kernel_build() of linux-source-7.2 with :data:`ARM64_FILE_KERNEL_CONFIG` (about 5 MB;
    29 min to build on the 2-core machine under a load of 15, cached afterwards)."""
    return kernel_build("kexec-file", "arm64", ARM64_FILE_KERNEL_CONFIG)


# --------------------------------------------------------------------------
# KHO and LUO (issue 19): a 7.2 kernel with Kexec HandOver, the Live Update
# Orchestrator and ramoops, for tests/vm/test_kho.py

#: the symbols kernel/liveupdate/Kconfig and fs/pstore/Kconfig of 7.2 name:
#: KHO with its debugfs (kho/out/scratch_phys, kho/in/fdt), LUO with memfd
#: preservation (/dev/liveupdate), and ramoops with the console log (pstore
#: shows the first kernel's console after the handover)
KHO_CONFIG = (
    "KEXEC_HANDOVER", "KEXEC_HANDOVER_DEBUGFS", "LIVEUPDATE", "LIVEUPDATE_MEMFD",
    "MISC_FILESYSTEMS", "PSTORE", "PSTORE_RAM", "PSTORE_CONSOLE",
)


def kho_kernel() -> tuple:
    """The x86_64 KHO test kernel: ``(bzImage, .config)``, built once and cached."""
    return kernel_build("kho", "x86_64", KHO_CONFIG)


# --------------------------------------------------------------------------
# the arm64 guest: sid's 7.x kernel, trixie's arm64 userland


def sid_arm64_image() -> Path:
    """The newest arm64 kernel of sid (7.x): ``usr/lib/modules/<ver>/vmlinuz`` of
    linux-binary-*-arm64, an uncompressed Image with a PE header (the arm64 guest's kernel)."""
    return _vmlinuz(_apt(_SID), "linux-image-arm64", "arm64")


def sid_arm64_16k_image() -> Path:
    """sid's arm64 kernel built for 16K pages (``linux-image-arm64-16k``): its Image header
    says 16K, and a 4K first kernel loads it through kexec_load."""
    return _vmlinuz(_apt(_SID), "linux-image-arm64-16k", "arm64")


def sid_arm64_config() -> Path:
    """The ``.config`` of sid_arm64_image(): 7.x ships it in linux-base-<ver>-arm64, beside
    the binary package (``usr/lib/modules/<ver>/config``)."""
    binary = _kernel_package(_apt(_SID), "linux-image-arm64", "arm64")
    name = binary.split(":")[0]
    if not name.startswith("linux-binary-"):
        raise _fail(f"sid's linux-image-arm64 resolves to {name}, not a linux-binary-* package")
    base = "linux-base-" + name[len("linux-binary-"):] + ":arm64"
    tree = _package(_apt(_SID), base, ["./usr/lib/modules/*/config"])
    return _one(tree, "usr/lib/modules/*/config", base)


#: what the arm64 guest runs, from trixie (arm64): Python 3.13 and pykexec's
#: dependencies as Debian packages (see pyproject.toml for the minimums)
ARM64_PYTHON_ROOTS = (
    "python3.13-minimal", "libpython3.13-minimal", "libpython3.13-stdlib",
    "python3-pefile", "python3-pyelftools", "python3-zstandard", "python3-lz4",
    "python3-lzo", "python3-cryptography", "python3-cffi-backend", "python3-libfdt",
)
ARM64_KEXEC_TOOLS_ROOTS = ("kexec-tools",)

#: dependencies never followed into a guest tree: package machinery and data an
#: initramfs does not use (the guest gets /usr/bin/python3 as a plain link)
_ARM64_SKIP = frozenset({
    "dpkg", "debconf", "perl-base", "python3", "python3-minimal", "libpython3-stdlib",
    "readline-common", "tzdata", "media-types", "netbase", "ca-certificates",
    "python3-bcrypt",  # Depends of python3-cryptography, never imported by pykexec
})

#: members of a package never copied into a guest tree
_ARM64_TREE_EXCLUDE = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
                       "usr/share/lintian", "usr/share/bug", "usr/share/bash-completion",
                       "usr/share/doc-base", "usr/share/binfmts", "usr/share/gdb",
                       "usr/lib/aarch64-linux-gnu/gconv")  # iconv modules: Python does not use them
#: bump when what goes into an arm64 tree changes (part of its cache key)
_ARM64_TREE_LAYOUT = 2


def _arch_spec(apt: _Apt, pkg: str) -> tuple:
    """(spec, info) for ``pkg`` as an arm64 package, or as an Architecture: all one."""
    info = apt.show(f"{pkg}:arm64")
    if info is not None:
        return f"{pkg}:arm64", info
    info = apt.show(pkg)
    if info is None or info.get("Architecture") not in ("all", "arm64"):
        apt.ensure_lists(refresh=True)
        info = apt.show(pkg)
    if info is None or info.get("Architecture") not in ("all", "arm64"):
        raise _fail(f"package {pkg} (arm64 or all) is not known to the {apt.name} apt sources")
    return pkg, info


def arm64_closure(roots: Sequence[str]) -> dict:
    """{package: (spec, version)} for ``roots`` and everything they depend on (Depends and
    Pre-Depends, every alternative apt names), in trixie for arm64, without _ARM64_SKIP."""
    apt = _apt(_TRIXIE_ARM64)
    todo = list(roots)
    out: dict = {}
    while todo:
        pkg = todo.pop(0).split(":")[0]
        if pkg in out or pkg in _ARM64_SKIP:
            continue
        spec, info = _arch_spec(apt, pkg)
        out[pkg] = (spec, info["Version"])
        todo += [d.split(":")[0] for d in apt.depends(spec)]
    return dict(sorted(out.items()))


def _merge_into(tree: Path, root: Path) -> None:
    """Link (or copy) the files of one extracted package into ``root``, as a merged-/usr
    system holds them: top-level bin, sbin, lib go under usr/."""
    for dirpath, dirnames, filenames in os.walk(tree):
        rel = Path(dirpath).relative_to(tree)
        parts = rel.parts
        if parts and parts[0] in ("bin", "sbin", "lib", "lib64"):
            parts = ("usr",) + parts
        drel = PurePosixPath(*parts) if parts else PurePosixPath(".")
        if any(str(drel) == e or str(drel).startswith(e + "/") for e in _ARM64_TREE_EXCLUDE):
            dirnames[:] = []
            continue
        dest = root.joinpath(*parts)
        for d in list(dirnames):
            if os.path.islink(os.path.join(dirpath, d)):
                dirnames.remove(d)
                filenames.append(d)
        dest.mkdir(parents=True, exist_ok=True)
        for name in filenames:
            if not parts and name in (".package", ".complete"):
                continue
            src = os.path.join(dirpath, name)
            dst = dest / name
            if os.path.lexists(dst):
                if os.path.isdir(dst) and not os.path.islink(dst):
                    raise _fail(f"{src}: a directory {dst} is in the way")
                dst.unlink()
            if os.path.islink(src):
                os.symlink(os.readlink(src), dst)
            else:
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)


def _arm64_tree(kind: str, roots: Sequence[str], links: Mapping[str, str] = {}) -> Path:
    """The packages of arm64_closure(roots) extracted into one merged-/usr tree, plus
    the symlinks ``links`` ({path in the tree: target}).

    Cached as ``arm64/<kind>_<hash of every package and version>/root``; the
    packages and versions are listed in ``packages.txt`` beside it.
    """
    closure = arm64_closure(roots)
    listing = "".join(f"{pkg} {ver}\n" for pkg, (_spec, ver) in closure.items())
    key = hashlib.sha256(f"{_ARM64_TREE_LAYOUT}\n{listing}".encode()).hexdigest()[:16]
    final = cache_root() / "arm64" / f"{kind}_{key}"
    if _done(final):
        return final / "root"
    trees = [_package(_apt(_TRIXIE_ARM64), spec) for spec, _ver in closure.values()]
    with _lock("arm64-" + final.name):
        if _done(final):
            return final / "root"
        stage = _staging(final.name)
        try:
            root = stage / "root"
            root.mkdir()
            for t in trees:
                _merge_into(t, root)
            for link in ("bin", "sbin", "lib"):
                (root / "usr" / link).mkdir(parents=True, exist_ok=True)
                os.symlink(f"usr/{link}", root / link)
            for path, target in links.items():
                if not os.path.lexists(root / path):
                    os.symlink(target, root / path)
            (stage / "packages.txt").write_text(listing)
            _mark_done(stage)
            _publish(stage, final)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return final / "root"


def arm64_python_tree() -> Path:
    """trixie's arm64 Python 3.13 with pykexec's dependencies (python3-pefile,
    -pyelftools, -zstandard, -lz4, -lzo, -cryptography, -cffi-backend, -libfdt) and
    every library they need, extracted into one merged-/usr tree (never installed).

    ``root/usr/bin/python3.13`` is the interpreter; ``root/usr/bin/python3`` links to it.
    ``packages_of(tree)`` lists the packages and versions.
    """
    root = _arm64_tree("python", ARM64_PYTHON_ROOTS, {"usr/bin/python3": "python3.13"})
    if not (root / "usr" / "bin" / "python3.13").is_file():
        raise _fail(f"{root} has no usr/bin/python3.13")
    return root


def arm64_kexec_tools_tree() -> Path:
    """trixie's kexec-tools:arm64 and its libraries (libxen*, ...), as arm64_python_tree()."""
    root = _arm64_tree("kexec-tools", ARM64_KEXEC_TOOLS_ROOTS)
    if not (root / "usr" / "sbin" / "kexec").is_file():
        raise _fail(f"{root} has no usr/sbin/kexec")
    return root


def arm64_busybox() -> Path:
    """trixie's busybox-static:arm64 (a static busybox for the arm64 guest)."""
    tree = _package(_apt(_TRIXIE_ARM64), "busybox-static:arm64", ["./bin/busybox", "./usr/bin/busybox"])
    return _one(tree, "**/busybox", "busybox-static:arm64")


def packages_of(tree: PathLike) -> dict:
    """{package: version} of an arm64 guest tree (arm64_python_tree(), arm64_kexec_tools_tree())."""
    text = (Path(tree).parent / "packages.txt").read_text()
    return dict(line.split(" ", 1) for line in text.splitlines() if line)


# --------------------------------------------------------------------------
# XenServer's Xen with the EFI kexec load types (issue #18), built from its git
# history: the hypervisor alone (make -C xen), cached by commit and configuration

#: where the fetched ``xenserver-next/xen`` git directory is (``fetch github:xenserver-next/xen``)
XENSERVER_GIT = "/work/.mirror/xenserver-next+xen/repo"
#: the commit the scenarios boot: "Support non-page-aligned kexec segments", the last of the
#: series on branch NUMA-claims-v2+-nodes_api (lockdown, purgatory in Xen, EFI load types)
XENSERVER_COMMIT = "19b98a02d5e77021e10b39276c3bacd70fe72b11"
#: defconfig (x86_64_defconfig is empty: every default, KEXEC among them) made minimal for a PV
#: dom0 with kexec: no HVM (VMX, SVM, altp2m, ioreq servers), no live patching and so no debug
#: info (DEBUG_INFO defaults to LIVEPATCH), no hypervisor file system; each must come out of
#: olddefconfig as asked, else the build fails naming it
XENSERVER_CONFIG = {"KEXEC": "y", "HVM": "n", "LIVEPATCH": "n", "DEBUG_INFO": "n", "HYPFS": "n"}


def _xen_git() -> Path:
    git = Path(os.environ.get("PYKEXEC_XENSERVER_GIT", XENSERVER_GIT))
    if not (git / "objects").is_dir() and not (git / ".git").is_dir():
        raise _fail(f"XenServer's Xen git directory not found at {git} (bring github:xenserver-next/xen "
                    "here, or set PYKEXEC_XENSERVER_GIT to a clone's git directory)")
    return git


def xenserver_xen(commit: str = XENSERVER_COMMIT) -> Path:
    """``xen/xen`` (an ELF32 with Multiboot headers, booted by QEMU's Multiboot loader) built
    from ``git archive <commit>`` of XenServer's tree with defconfig + :data:`XENSERVER_CONFIG`.

    Cached as ``xen/xenserver_<commit[:12]>_<hash of the configuration>/`` with ``xen``,
    ``config`` and ``build-seconds`` (the build's wall time, for the CI budget)."""
    digest = hashlib.sha256(json.dumps(sorted(XENSERVER_CONFIG.items())).encode()).hexdigest()[:12]
    final = cache_root() / "xen" / f"xenserver_{commit[:12]}_{digest}"
    if _done(final):
        return final / "xen"
    with _lock("xen-" + final.name):
        if _done(final):
            return final / "xen"
        git = _xen_git()
        t0 = time.monotonic()
        _ensure_build_tools()
        stage = _staging(final.name)
        try:
            src = stage / "src"
            src.mkdir()
            archive = _run(["git", "--git-dir", git, "archive", "--format=tar", commit, "xen", "Config.mk",
                            "config", "version.sh"], what=f"git archive {commit[:12]}").stdout
            with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
                tar.extractall(src, filter="data")
            env = dict(os.environ, XEN_BUILD_DATE="Thu Jan  1 00:00:00 UTC 2026", XEN_WHOAMI="pykexec",
                       XEN_DOMAIN="material", LC_ALL="C")
            make = ["make", "-C", os.fspath(src / "xen")]
            _log(f"xenserver xen {commit[:12]}: make defconfig")
            _run([*make, "defconfig"], what="make -C xen defconfig", env=env)
            config = src / "xen" / ".config"
            with config.open("a") as f:
                f.writelines(f"CONFIG_{k}={v}\n" if v != "n" else f"# CONFIG_{k} is not set\n"
                             for k, v in XENSERVER_CONFIG.items())
            _run([*make, "olddefconfig"], what="make -C xen olddefconfig", env=env)
            got = _kconfig(src / "xen")
            dropped = [k for k, v in XENSERVER_CONFIG.items() if got.get(f"CONFIG_{k}", "n") != v]
            if dropped:
                raise _fail(f"xenserver xen {commit[:12]}: olddefconfig dropped {dropped}")
            jobs = str((os.cpu_count() or 1) + 1)
            _log(f"xenserver xen {commit[:12]}: make -C xen -j{jobs}")
            _run([*make, f"-j{jobs}"], what=f"make -C xen ({commit[:12]})", env=env, timeout=3600)
            shutil.copyfile(src / "xen" / "xen", stage / "xen")
            shutil.copyfile(config, stage / "config")
            (stage / "build-seconds").write_text(f"{time.monotonic() - t0:.0f}\n")
            shutil.rmtree(src)
            _mark_done(stage)
            _publish(stage, final)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        _log(f"xenserver xen {commit[:12]} built in {time.monotonic() - t0:.0f}s")
    return final / "xen"


# --------------------------------------------------------------------------


def fetch_all(progress=None) -> dict:
    """Fetch and build everything; returns {name: path or tuple}.  Raises on the first failure."""
    steps = [
        ("bookworm_cloud_bzimage", bookworm_cloud_bzimage),
        ("bookworm_signed_bzimage", bookworm_signed_bzimage),
        ("sid_cloud_bzimage", sid_cloud_bzimage),
        ("arm64_image", arm64_image),
        ("arm64_image_gz", arm64_image_gz),
        ("xen_hypervisor_gz", xen_hypervisor_gz),
        ("ipxe_lkrn", ipxe_lkrn),
        ("memtest86_bin", memtest86_bin), ("syslinux_memdisk", syslinux_memdisk),
        *((f"foreign_kernel({a})", (lambda a=a: foreign_kernel(a))) for a in FOREIGN_KERNELS),
        ("systemd_stub(bookworm, x64, linux)", lambda: systemd_stub("bookworm", "x64", "linux")),
        ("systemd_stub(bookworm, aa64, linux)", lambda: systemd_stub("bookworm", "aa64", "linux")),
        ("systemd_stub(sid, x64, linux)", lambda: systemd_stub("sid", "x64", "linux")),
        ("systemd_stub(sid, x64, addon)", lambda: systemd_stub("sid", "x64", "addon")),
        ("systemd_stub(sid, aa64, linux)", lambda: systemd_stub("sid", "aa64", "linux")),
        ("systemd_stub(sid, aa64, addon)", lambda: systemd_stub("sid", "aa64", "addon")),
        ("ukify", ukify),
        ("linux_source_tree", linux_source_tree),
        ("linux_source_tree(7.2)", lambda: linux_source_tree("7.2")),
        ("extract_vmlinux_script", extract_vmlinux_script),
    ] + [
        (f"arm64_zboot({c})", (lambda c=c: arm64_zboot(c))) for c in ZBOOT_COMPRESSIONS
    ] + [
        ("arm64_zboot_debian(gzip)", lambda: arm64_zboot_debian("gzip")),
        *((f"arm64_zboot_debian({c}, sid)", (lambda c=c: arm64_zboot_debian(c, image=sid_arm64_image())))
          for c in ("gzip", "zstd")),
        ("sid_arm64_image", sid_arm64_image),
        ("sid_arm64_16k_image", sid_arm64_16k_image),
        ("sid_arm64_config", sid_arm64_config),
        ("arm64_python_tree", arm64_python_tree),
        ("arm64_kexec_tools_tree", arm64_kexec_tools_tree),
        ("arm64_busybox", arm64_busybox),
        ("arm64_file_kernel", arm64_file_kernel),
        ("kho_kernel", kho_kernel),
        ("xenserver_xen", xenserver_xen),   # last: it needs the fetched xenserver-next/xen git directory
    ]
    results = {}
    for name, fn in steps:
        t0 = time.monotonic()
        if progress:
            progress(f"{name} ...")
        results[name] = fn()
        if progress:
            progress(f"{name} -> {results[name]} ({time.monotonic() - t0:.1f}s)")
    return results
