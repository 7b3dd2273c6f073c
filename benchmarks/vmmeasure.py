"""Guest-side code shared by the VM benchmarks: time one process as the guest sees it.

``MEASURE`` is Python source defining ``measure(argv) -> dict`` (wall time from
fork to reap, the child's peak RSS and CPU times from ``wait4``, exit code, and
the tail of stderr on failure).  The benchmarks paste it into the stage script
they send to the guest; it needs ``os``, ``subprocess``, ``tempfile`` and ``time``.
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
