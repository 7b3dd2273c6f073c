#!/usr/bin/env python3
"""Time building a kdump ELF core header for a large synthetic machine.

Usage: python benchmarks/bench_elfcorehdr.py [--ranges N] [--cpus N] [--runs N] [--json]

The machine has N "System RAM" ranges (1 MiB each, separated by 4 KiB
"Reserved" gaps, as a fragmented memory map looks), a 256 MiB crash region
in the middle, and N CPUs with crash notes.  Timed, separately and together:

  ranges  pykexec.boot.elfcore.crash_ranges(): System RAM + ACPI minus the crash
          regions, from the machine model;
  build   pykexec.boot.elfcore.build(): the ELF64 header, one PT_NOTE per CPU,
          vmcoreinfo, one PT_LOAD per range, the 640 KiB backup split out;
  total   both.

The median of --runs (default 7), in CPU time of this process (robust on a busy
host), is reported, with the header size.  The
defaults are the issue's: 16,384 ranges and 8,192 CPUs (kexec-tools stops at
2,048 ranges).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pykexec.boot import elfcore  # noqa: E402
from pykexec.machine import Range, TypedRange  # noqa: E402
from pykexec.machine.model import Machine  # noqa: E402

MiB = 1 << 20


def machine(ranges: int) -> Machine:
    memory = [TypedRange(0, 0x1000, "Reserved", 0), TypedRange(0x1000, 0x9EC00, "System RAM", 0)]
    addr = MiB
    for _ in range(ranges - 1):
        memory.append(TypedRange(addr, MiB, "System RAM", 0))
        memory.append(TypedRange(addr + MiB, 0x1000, "Reserved", 0))
        addr += MiB + 0x1000
    middle = memory[len(memory) // 2]
    crash = Range(middle.start & ~(MiB - 1), 256 * MiB)
    memory.append(TypedRange(crash.start, crash.size, "Crash kernel", 1))
    memory.sort(key=lambda r: (r.start, r.depth))
    return Machine(arch="x86_64", memory=tuple(memory), memory_source="iomem", crashk_res=crash)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranges", type=int, default=16384)
    ap.add_argument("--cpus", type=int, default=8192)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    m = machine(args.ranges)
    sources = elfcore.synthetic_sources(args.cpus)
    backup = elfcore.Backup(Range(0x1000, 0x9EC00), m.crashk_res.start)
    times = {"ranges": [], "build": [], "total": []}
    header = b""
    for _ in range(args.runs + 1):                       # the first run warms up and is dropped
        t0 = time.process_time()
        ranges = elfcore.crash_ranges(m)
        t1 = time.process_time()
        header = elfcore.build(ranges, sources=sources, backup=backup)
        t2 = time.process_time()
        for name, value in (("ranges", t1 - t0), ("build", t2 - t1), ("total", t2 - t0)):
            times[name].append(value)
    count = int.from_bytes(header[56:58], "little")
    result = {"ranges_in_machine": args.ranges, "cpus": args.cpus, "program_headers": count,
              "header_bytes": len(header), "runs": args.runs,
              **{f"{k}_ms": round(statistics.median(v[1:]) * 1000, 2) for k, v in times.items()}}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"elfcorehdr for {args.ranges} ranges and {args.cpus} CPUs: {count} program headers, "
              f"{len(header) / MiB:.2f} MiB")
        print(f"  crash_ranges {result['ranges_ms']:8.2f} ms")
        print(f"  build        {result['build_ms']:8.2f} ms")
        print(f"  total        {result['total_ms']:8.2f} ms   (median of {args.runs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
