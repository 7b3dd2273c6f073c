"""Planner time on synthetic memory maps of 1k, 10k and 100k ranges with many reserved holes.

Each map alternates small "System RAM" ranges with "Reserved" holes (plus a
nested child in every tenth RAM range, as iomem has "Kernel code" etc.), so
most ranges are too small for the kernel and the hole finder must walk far.
The largest RAM range sits at the bottom, so top-down walks go through every
range before they find room.  Times the snapshot-to-plan path a user runs:
building the Machine views (System RAM walk list) and planning, for
linux-file (newest and 6.1 behaviour), linux-user and crash loads.

    python benchmarks/bench_plan.py            # prints a table and the growth
    python benchmarks/bench_plan.py --check    # exit 1 if 100k ranges take >= 0.5 s
"""

from __future__ import annotations

import argparse
import sys
import time

from pykexec.formats import bzimage
from pykexec.machine import Machine, Range, TypedRange
from pykexec.plan import plan

MiB = 1 << 20
TARGET_SECONDS = 0.5


def bzimage_bytes() -> bytes:
    """A minimal bzImage with the Debian 6.1 cloud kernel's header values (52 MiB init_size)."""
    try:
        from tests import builders
    except ImportError:  # run from elsewhere: fall back to the repository root on sys.path
        sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
        from tests import builders
    return builders.bzimage(version=0x20F, setup_sects=39, init_size=0x3378000)


def synthetic_map(n: int) -> Machine:
    memory: list[TypedRange] = []
    # One big range at the bottom where everything fits: 1 GiB at 16 MiB.
    memory.append(TypedRange(MiB, 15 * MiB, "System RAM"))
    memory.append(TypedRange(16 * MiB, 1024 * MiB, "System RAM"))
    memory.append(TypedRange(16 * MiB + 0x200000, 0x1000000, "Kernel code", 1))
    crash = Range(512 * MiB, 256 * MiB)
    memory.append(TypedRange(crash.start, crash.size, "Crash kernel", 1))
    cursor = 2048 * MiB
    i = 0
    while len(memory) < n:
        ram = TypedRange(cursor, 0x40000 + (i % 7) * 0x1000, "System RAM")
        memory.append(ram)
        if i % 10 == 0:
            memory.append(TypedRange(ram.start + 0x1000, 0x1000, "reserved", 1))
        cursor = ram.end
        hole = TypedRange(cursor, 0x1000 * (1 + i % 3), "Reserved")
        memory.append(hole)
        cursor = hole.end
        i += 1
    return Machine(arch="x86_64", memory=tuple(memory[:n]), memory_source="iomem", crashk_res=crash,
                   kernel_release="6.12.0", possible_cpus=4, mem_total=64 << 30)


def time_plans(n: int, layer, initrd: bytes, repeat: int = 3) -> dict[str, float]:
    out = {}
    cases = {
        "linux-file": dict(target="linux-file"),
        "linux-file 6.1": dict(target="linux-file", release="6.1.0"),
        "linux-user": dict(target="linux-user"),
        "crash": dict(target="linux-file", crash=True),
    }
    for name, case in cases.items():
        best = float("inf")
        for _ in range(repeat):
            machine = synthetic_map(n)
            if "release" in case:
                machine = machine.with_changes(kernel_release=case["release"])
            start = time.perf_counter()
            result = plan(layer, machine=machine, target=case["target"], crash=case.get("crash", False),
                          initrd=initrd, cmdline="console=ttyS0")
            result.validate()
            best = min(best, time.perf_counter() - start)
        out[name] = best
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help=f"fail if 100k ranges take {TARGET_SECONDS} s or more")
    args = parser.parse_args(argv)
    layer = bzimage.parse(bzimage_bytes())
    initrd = bytes(32 * MiB)
    sizes = (1_000, 10_000, 100_000)
    results = {n: time_plans(n, layer, initrd) for n in sizes}
    names = list(results[sizes[0]])
    print(f"{'ranges':>8}  " + "  ".join(f"{name:>15}" for name in names))
    for n in sizes:
        print(f"{n:>8}  " + "  ".join(f"{results[n][name] * 1000:>13.1f}ms" for name in names))
    print("growth 1k -> 10k -> 100k (x):")
    for name in names:
        a, b, c = (results[n][name] for n in sizes)
        print(f"  {name:<15} {b / a:5.1f}  {c / b:5.1f}")
    worst = max(results[100_000].values())
    print(f"worst at 100k ranges: {worst:.3f} s (target < {TARGET_SECONDS} s)")
    return 1 if args.check and worst >= TARGET_SECONDS else 0


if __name__ == "__main__":
    sys.exit(main())
