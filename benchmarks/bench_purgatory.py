#!/usr/bin/env python3
"""Throughput of the purgatory's SHA-256, run natively from the committed purgatory.bin.

Usage: python benchmarks/bench_purgatory.py [--mib N] [--runs N] [--json]

``purgatory.bin`` is mapped executable and its ``pg_sha256`` called through
ctypes, so these are the exact bytes kexec_load loads.  Three ways over an
N MiB buffer (default 64, the issue's initrd size):

  sha-ni    the SHA extensions path (sha256rnds2/msg1/msg2), when CPUID has them;
  portable  the general-register path the purgatory falls back to (and the one a
            QEMU TCG guest without SHA-NI runs);
  hashlib   OpenSSL through Python, for scale.

The median of --runs (default 5), in CPU time of this process (robust on a busy
host), is reported as MiB/s and as the time the
purgatory would spend on the buffer.  The purgatory hashes every segment,
kernel and initrd included, before it jumps.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from pykexec.boot import purgatory  # noqa: E402
from tests.unit.boot.purgatory_host import NativeSha256  # noqa: E402


def timed(fn, runs: int) -> float:
    times = []
    for _ in range(runs + 1):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times[1:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    data = os.urandom(args.mib << 20)
    native = NativeSha256(purgatory.load())
    expected = hashlib.sha256(data).digest()
    cases = {}
    if native.has_shani():
        assert native.digest(data) == expected
        cases["sha-ni"] = timed(lambda: native.digest(data), args.runs)
    assert native.digest(data, portable=True) == expected
    cases["portable"] = timed(lambda: native.digest(data, portable=True), args.runs)
    cases["hashlib"] = timed(lambda: hashlib.sha256(data).digest(), args.runs)
    result = {"mib": args.mib, "runs": args.runs, "cpu_has_sha_ni": native.has_shani(),
              **{name: {"seconds": round(t, 4), "mib_per_s": round(args.mib / t, 1)} for name, t in cases.items()}}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"purgatory SHA-256 over {args.mib} MiB (median of {args.runs}); "
              f"CPU has SHA-NI: {native.has_shani()}")
        for name, t in cases.items():
            print(f"  {name:9} {args.mib / t:8.1f} MiB/s  {t * 1000:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
