#!/usr/bin/env python3
"""Whole-process cost of ``pykexec extract`` against the plain decompressor CLI.

Usage: python benchmarks/bench_extract.py [--json] [--runs N] [--check]

Cases (material from tests/material.py, fetched and cached on first use):

  sid-bzimage-zstd  sid's 7.x cloud bzImage.  Its payload (payload_offset and
                    payload_length at 0x248/0x24c, counted from the end of the
                    setup, (setup_sects+1)*512) is cut out to a file, and
                    ``zstd -d -c payload > FILE`` is timed against
                    ``python -m pykexec extract IMAGE -o DIR``.  Both write
                    what they decompress to a file: the same job.
  arm64-zboot-gzip  the gzip arm64 EFI zboot kernel built from linux-source-6.1
                    (tinyconfig: a 1.7 MiB Image, so this case mostly measures
                    process start-up).  Its payload (offset u32 at 8, size u32
                    at 12) against ``gzip -d -c``.
  arm64-zboot-debian-gzip
                    the same build's zboot rules wrapped around Debian's own
                    arm64 Image (32 MiB): a distribution-sized zboot.

Each command runs N times (default 5, after one warm-up), interleaved; the
median wall time is reported, with the ratio pykexec/baseline.  Peak RSS is
the maximum resident set size of each process as /usr/bin/time reports it
(installed with apt-get if missing; without it, os.wait4's ru_maxrss, which
overstates).  "output" is the decompressed payload size.

Targets: ratio <= 1.5 and pykexec's peak RSS <= 2 x output + 64 MiB.
--json prints a JSON document on stdout (the table goes to stderr);
--check exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import material  # noqa: E402

MiB = 1 << 20
USE_TIME = True
RATIO_TARGET = 1.5
RSS_SLACK = 64 * MiB


def _env() -> dict:
    env = dict(os.environ)
    if importlib.util.find_spec("pykexec") is None:
        env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


TIME = "/usr/bin/time"


def ensure_gnu_time() -> bool:
    """GNU time measures a child's peak RSS from a tiny parent.  os.wait4 from
    this (large) process would count the pages the child had before exec."""
    if os.access(TIME, os.X_OK):
        return True
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "time"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    return os.access(TIME, os.X_OK)


def run_measured(cmd, *, env=None, stdout=os.devnull) -> tuple:
    """Run cmd (stdout to a file); return (wall seconds, peak RSS bytes)."""
    argv = [os.fspath(c) for c in cmd]
    with open(stdout, "wb") as devnull, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(prefix="rss.") as rss:
        if USE_TIME:
            argv = [TIME, "-f", "%M", "-o", rss.name, *argv]
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=devnull, stderr=err, env=env)
        _, status, rusage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"`{' '.join(argv)}` exited {proc.returncode}: "
                               f"{err.read().decode(errors='replace')[-800:]}")
        if USE_TIME:
            peak_kb = int(Path(rss.name).read_text().split()[-1])
        else:
            peak_kb = rusage.ru_maxrss
    return wall, peak_kb * 1024


def decompressed_size(cmd) -> int:
    proc = subprocess.run([os.fspath(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(map(str, cmd))}` failed: {proc.stderr.decode(errors='replace')}")
    return len(proc.stdout)


def bzimage_payload(data: bytes) -> bytes:
    setup_sects = data[0x1F1] or 4
    off, length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + off
    return data[start:start + length]


def zboot_payload(data: bytes) -> bytes:
    assert data[4:8] == b"zimg", "not an EFI zboot image"
    off, size = struct.unpack_from("<II", data, 8)
    return data[off:off + size]


def dir_size(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def bench_case(name: str, image: Path, payload: bytes, tool: list, suffix: str, runs: int,
               work: Path) -> dict:
    pfile = work / f"{name}.payload{suffix}"
    pfile.write_bytes(payload)
    baseline = [*tool, "-d", "-c", pfile]
    try:
        out_size = decompressed_size(baseline)
    except RuntimeError:
        # the kernel build appends the decompressed size (le32) after some streams
        pfile.write_bytes(payload[:-4])
        out_size = decompressed_size(baseline)
    outdir = work / f"{name}.out"
    env = _env()
    candidate = [sys.executable, "-m", "pykexec", "extract", image, "-o", outdir]

    def one(cmd, cand):
        if cand and outdir.exists():
            shutil.rmtree(outdir)
        if cand:
            return run_measured(cmd, env=env)
        return run_measured(cmd, stdout=work / f"{name}.baseline.out")

    one(baseline, False)  # warm-up: page cache, imports
    one(candidate, True)
    extract_size = dir_size(outdir)
    base_t, base_rss, cand_t, cand_rss = [], [], [], []
    for _ in range(runs):
        t, r = one(baseline, False)
        base_t.append(t)
        base_rss.append(r)
        t, r = one(candidate, True)
        cand_t.append(t)
        cand_rss.append(r)
    shutil.rmtree(outdir, ignore_errors=True)
    bm, cm = statistics.median(base_t), statistics.median(cand_t)
    peak = max(cand_rss)
    rss_limit = 2 * out_size + RSS_SLACK
    ratio = cm / bm
    return {
        "case": name,
        "image": str(image),
        "image_size": image.stat().st_size,
        "payload_size": len(payload),
        "output_size": out_size,
        "extract_dir_size": extract_size,
        "runs": runs,
        "baseline": {"cmd": " ".join(map(str, [*tool, "-d", "-c", "PAYLOAD", ">", "FILE"])),
                     "median_s": bm, "times_s": base_t, "peak_rss": max(base_rss)},
        "pykexec": {"cmd": "python -m pykexec extract IMAGE -o DIR",
                    "median_s": cm, "times_s": cand_t, "peak_rss": peak},
        "ratio": ratio,
        "ratio_target": RATIO_TARGET,
        "ratio_ok": ratio <= RATIO_TARGET,
        "rss_limit": rss_limit,
        "rss_ok": peak <= rss_limit,
    }


def table(results: list) -> str:
    lines = [f"{'case':<24} {'command':<28} {'median':>9} {'peak RSS':>10} {'output':>10}"]
    for r in results:
        lines.append(f"{r['case']:<24} {r['baseline']['cmd'].split(' -d')[0] + ' -d':<28} "
                     f"{r['baseline']['median_s']:>8.3f}s {r['baseline']['peak_rss'] / MiB:>7.1f}MiB "
                     f"{r['output_size'] / MiB:>7.1f}MiB")
        lines.append(f"{'':<24} {'pykexec extract':<28} {r['pykexec']['median_s']:>8.3f}s "
                     f"{r['pykexec']['peak_rss'] / MiB:>7.1f}MiB {r['extract_dir_size'] / MiB:>7.1f}MiB")
        lines.append(f"{'':<24} ratio {r['ratio']:.2f}x (target <= {r['ratio_target']}x: "
                     f"{'ok' if r['ratio_ok'] else 'MISSED'}); peak {r['pykexec']['peak_rss'] / MiB:.1f} MiB "
                     f"<= 2 x {r['output_size'] / MiB:.1f} + 64 = {r['rss_limit'] / MiB:.1f} MiB: "
                     f"{'ok' if r['rss_ok'] else 'MISSED'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print JSON on stdout (table on stderr)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per command (default 5)")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args(argv)

    for tool in ("zstd", "gzip"):
        if shutil.which(tool) is None:
            print(f"bench_extract: {tool} not found (apt-get install {tool})", file=sys.stderr)
            return 2
    global USE_TIME
    USE_TIME = ensure_gnu_time()
    sid = material.sid_cloud_bzimage()
    zboot, _image = material.arm64_zboot("gzip")
    zboot_debian, _image = material.arm64_zboot_debian("gzip")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-extract.") as td:
        work = Path(td)
        results.append(bench_case("sid-bzimage-zstd", sid, bzimage_payload(sid.read_bytes()),
                                  ["zstd", "-q"], ".zst", args.runs, work))
        results.append(bench_case("arm64-zboot-gzip", zboot, zboot_payload(zboot.read_bytes()),
                                  ["gzip"], ".gz", args.runs, work))
        results.append(bench_case("arm64-zboot-debian-gzip", zboot_debian,
                                  zboot_payload(zboot_debian.read_bytes()), ["gzip"], ".gz", args.runs, work))
    doc = {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "rss_method": "GNU time %M" if USE_TIME else "os.wait4 ru_maxrss (overstates: counts pre-exec pages)",
        "targets": {"ratio": RATIO_TARGET, "peak_rss": "2 x output + 64 MiB"},
        "results": results,
        "ok": all(r["ratio_ok"] and r["rss_ok"] for r in results),
    }
    if args.json:
        print(table(results), file=sys.stderr)
        print(json.dumps(doc, indent=2))
    else:
        print(table(results))
    return 1 if args.check and not doc["ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
