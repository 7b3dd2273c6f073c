#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Build the pykexec arm64 purgatory with Debian's cross toolchain
# (gcc-aarch64-linux-gnu: aarch64-linux-gnu-gcc 12, binutils 2.40 on bookworm)
# into OUTDIR (default: this directory).
#
#   sh build.sh [OUTDIR]
#
# Writes OUTDIR/purgatory.bin and OUTDIR/TOOLCHAIN.  The build is deterministic:
# no timestamps, no build id, no paths in the output, sources given relative to
# this directory.  It refuses to produce an image that has relocations left,
# a .got, or that differs when linked at another base address.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

CROSS=${CROSS_COMPILE:-aarch64-linux-gnu-}
CC=${CC:-${CROSS}gcc}
LD=${LD:-${CROSS}ld}
OBJCOPY=${OBJCOPY:-${CROSS}objcopy}
READELF=${READELF:-${CROSS}readelf}

# -mstrict-align: the MMU is off, all data is Device memory, an unaligned access faults.
# -mgeneral-regs-only: no FP/SIMD in C (only sha256_ce.S uses SIMD, after entry.S allowed it).
# -mcmodel=tiny: every address is formed with adr (PC-relative, any load address).
CFLAGS="-std=gnu11 -O2 -Wall -Wextra -Werror -ffreestanding -fno-builtin -nostdinc \
 -march=armv8-a -mstrict-align -mgeneral-regs-only -mcmodel=tiny -mno-outline-atomics \
 -mbranch-protection=none -fpie -fvisibility=hidden \
 -fno-stack-protector -fno-stack-clash-protection \
 -fno-asynchronous-unwind-tables -fno-unwind-tables -fno-exceptions \
 -fno-tree-loop-distribute-patterns -fno-delete-null-pointer-checks -fno-strict-aliasing \
 -fno-common -fno-ident -fno-plt -ffile-prefix-map=$here=. -I."
ASFLAGS="-march=armv8-a -fpie -nostdinc -I. -Wa,--noexecstack"

cd "$here"
$CC $ASFLAGS -c entry.S -o "$work/entry.o"
$CC $ASFLAGS -c sha256_ce.S -o "$work/sha256_ce.o"
$CC $CFLAGS -O3 -c sha256.c -o "$work/sha256.o"     # the later -O3 wins: see sha256.c
$CC $CFLAGS -c purgatory.c -o "$work/purgatory.o"

objs="$work/entry.o $work/sha256_ce.o $work/sha256.o $work/purgatory.o"
for base in 0 0x7f000000; do
	$LD -nostdlib -static --no-dynamic-linker --build-id=none -z noexecstack \
		-z norelro --no-warn-rwx-segments -T purgatory.lds --defsym=PG_BASE=$base \
		-o "$work/purgatory-$base.elf" $objs
	if $READELF -S "$work/purgatory-$base.elf" | grep -E '\.(rela?\.|got)' >/dev/null; then
		echo "build.sh: relocations or a GOT left in the purgatory" >&2
		$READELF -S "$work/purgatory-$base.elf" >&2
		exit 1
	fi
	$OBJCOPY -O binary -j .text -j .rodata -j .data \
		"$work/purgatory-$base.elf" "$work/purgatory-$base.bin"
done
if ! cmp -s "$work/purgatory-0.bin" "$work/purgatory-0x7f000000.bin"; then
	echo "build.sh: the image changes with its load address: it is not position independent" >&2
	exit 1
fi

install -m 0644 "$work/purgatory-0.bin" "$out/purgatory.bin"
{
	echo "gcc: $($CC --version | head -n1)"
	echo "ld: $($LD --version | head -n1)"
	echo "objcopy: $($OBJCOPY --version | head -n1)"
} > "$out/TOOLCHAIN"
echo "build.sh: $out/purgatory.bin ($(wc -c < "$out/purgatory.bin") bytes)"
