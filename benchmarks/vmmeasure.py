"""Guest-side code shared by the VM benchmarks: time one process as the guest sees it.

``MEASURE`` is Python source defining ``measure(argv) -> dict`` (wall time from
fork to reap, the child's peak RSS and CPU times from ``wait4``, exit code, and
the tail of stderr on failure).  The benchmarks paste it into the stage script
they send to the guest; it needs ``os``, ``subprocess``, ``tempfile`` and ``time``.
``NEWC`` defines ``newc(out, entries)``, which writes a newc cpio archive of host
files (it needs ``os`` and ``shutil``): the initrd of the next kernel of a chain.
``CHAIN`` is the rest of a chain benchmark's stage script: in the first kernel,
RUNS loads by each loader (``pykexec_load()``, ``kt_load()``, the latter named
``PEER``), then ``stage1_extra()``; in every kernel up to HOPS, one load by the
loader of this hop (pykexec on odd stages) and the exec.  It needs ``measure``,
``mark``, ``ctypes``, ``json``, ``os``, ``subprocess`` and the names above.
"""

MEASURE = '''
def measure(argv):
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        rc = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read()[-500:].decode(errors="replace")
    return {"wall": wall, "maxrss_kib": ru.ru_maxrss, "utime": ru.ru_utime, "stime": ru.ru_stime,
            "rc": rc, "err": tail if rc else ""}
'''

NEWC = r'''
def newc(out, entries):
    """entries: [(name in the archive, host path)]; regular files, then the trailer."""
    ino = 1
    def header(name, size, mode):
        nonlocal ino
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(raw), 0)
        out.write(b"070701" + b"".join(b"%08X" % v for v in fields) + raw)
        out.write(b"\0" * (-(110 + len(raw)) % 4))
        ino += 1
    for name, path in entries:
        size = os.path.getsize(path)
        header(name, size, 0o100644)
        with open(path, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
        out.write(b"\0" * (-size % 4))
    header("TRAILER!!!", 0, 0)
'''

CHAIN = r'''
def unload():
    subprocess.run([KT, "-u"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

if STAGE == 1:
    mark("kexec-tools", subprocess.run([KT, "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True).stdout.strip())
    results = {}
    for i in range(RUNS):
        for name, argv in (("pykexec load --mode user", pykexec_load()), (PEER, kt_load())):
            r = measure(argv)
            results.setdefault(name, []).append(r)
            mark("run", name.replace(" ", "_"), i, json.dumps(r))
            unload()
    mark("bench-load", json.dumps(results))
    stage1_extra()

if STAGE > HOPS:
    mark("chain-done", STAGE)
    raise SystemExit(0)

loader = "pykexec" if STAGE % 2 else "kexec-tools"
if SAME_WORK and STAGE > 1:
    # the other loader first (and unload), so that the kernel before every hop did the same work
    other = measure(kt_load() if loader == "pykexec" else pykexec_load())
    mark("hop-other-load", STAGE, json.dumps(other))
    unload()
r = measure(pykexec_load() if loader == "pykexec" else kt_load())
mark("hop-load", STAGE, loader, json.dumps(r))
if r["rc"] != 0 or open("/sys/kernel/kexec_loaded").read().strip() != "1":
    mark("hop-failed", STAGE, loader, r["err"].replace("\n", " | "))
    raise SystemExit(1)
with open("/proc/sys/kernel/printk", "w") as f:
    f.write("8")   # show kexec_core's "Starting new kernel" (KERN_NOTICE) despite "quiet"
mark("hop", STAGE, loader)
os.sync()
libc = ctypes.CDLL(None, use_errno=True)
libc.reboot(ctypes.c_int(0x45584543))   # LINUX_REBOOT_CMD_KEXEC
mark("hop-exec-failed", STAGE, os.strerror(ctypes.get_errno()))
raise SystemExit(1)
'''
