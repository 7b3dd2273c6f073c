/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * pykexec arm64 purgatory: the code kexec_load runs between the old kernel and the new one.
 *
 * The layout below is shared by entry.S (through the PG_* offsets), the C code
 * (through the structs, checked with _Static_assert) and pykexec.boot.purgatory.arm64
 * (through its Layout, pinned in tests/unit/boot/test_purgatory_arm64.py).  Change all
 * three together and bump PG_VERSION.
 */
#ifndef PYKEXEC_PURGATORY_ARM64_H
#define PYKEXEC_PURGATORY_ARM64_H

#define PG_VERSION		1
#define PG_MAX_REGIONS		16
#define PG_HEADER_SIZE		0x40
#define PG_STACK_SIZE		0x4000

/* pg_params.flags: the same bits as the x86_64 purgatory's for the same meaning. */
#define PG_SKIP_CHECKS		0x01	/* kexec -i: do not hash the segments */
#define PG_NO_SHA2		0x04	/* use the portable SHA-256 even if ID_AA64ISAR0_EL1 offers SHA2 */
#define PG_VERBOSE		0x08	/* say what happens on the UART, not only failures */

/* pg_params.uart_type */
#define PG_UART_NONE		0
#define PG_UART_PL011		1	/* UARTDR at +0x00, UARTFR at +0x18 (TXFF bit 5) */
#define PG_UART_8250		2	/* THR at 0 << shift, LSR at 5 << shift (THRE bit 5) */

/* Offsets in struct pg_params, for entry.S. */
#define PG_FLAGS		0x00
#define PG_NR_REGIONS		0x04
#define PG_UART_BASE		0x08
#define PG_UART_TYPE		0x10
#define PG_UART_SHIFT		0x11
#define PG_UART_WIDTH		0x12
#define PG_ENTRY		0x18
#define PG_X0			0x20
#define PG_REGIONS		0x28
#define PG_REGION_SIZE		0x40
#define PG_PARAMS_SIZE		(PG_REGIONS + PG_MAX_REGIONS * PG_REGION_SIZE)

#ifndef __ASSEMBLER__

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#pragma GCC visibility push(hidden)

/* [start, start + len) must hash to sha256; [start + len, start + len + zero_len) must be zero
 * (the padding the kernel zero-fills up to memsz), as in the x86_64 purgatory. */
struct pg_region {
	u64 start;
	u64 len;
	u64 zero_len;
	u64 reserved;
	u8 sha256[32];
};

struct pg_params {
	u32 flags;
	u32 nr_regions;
	u64 uart_base;		/* MMIO address of the console UART (/chosen/stdout-path) */
	u8 uart_type;		/* PG_UART_* */
	u8 uart_shift;		/* 8250: register stride is 1 << shift bytes (reg-shift) */
	u8 uart_width;		/* bytes per register access: 1, 2 or 4 (reg-io-width) */
	u8 reserved[5];
	u64 entry;		/* the kernel's entry: the Image's first byte */
	u64 x0;			/* the DTB's physical address */
	struct pg_region regions[PG_MAX_REGIONS];
};

_Static_assert(__builtin_offsetof(struct pg_params, nr_regions) == PG_NR_REGIONS, "PG_NR_REGIONS");
_Static_assert(__builtin_offsetof(struct pg_params, uart_base) == PG_UART_BASE, "PG_UART_BASE");
_Static_assert(__builtin_offsetof(struct pg_params, uart_type) == PG_UART_TYPE, "PG_UART_TYPE");
_Static_assert(__builtin_offsetof(struct pg_params, uart_shift) == PG_UART_SHIFT, "PG_UART_SHIFT");
_Static_assert(__builtin_offsetof(struct pg_params, uart_width) == PG_UART_WIDTH, "PG_UART_WIDTH");
_Static_assert(__builtin_offsetof(struct pg_params, entry) == PG_ENTRY, "PG_ENTRY");
_Static_assert(__builtin_offsetof(struct pg_params, x0) == PG_X0, "PG_X0");
_Static_assert(__builtin_offsetof(struct pg_params, regions) == PG_REGIONS, "PG_REGIONS");
_Static_assert(sizeof(struct pg_region) == PG_REGION_SIZE, "PG_REGION_SIZE");
_Static_assert(sizeof(struct pg_params) == PG_PARAMS_SIZE, "PG_PARAMS_SIZE");

extern struct pg_params pg_params;

/* sha256.c */
int pg_cpu_has_sha2(void);
void pg_sha256(const void *data, u64 len, u8 out[32], u32 flags);

/* sha256_ce.S */
void pg_sha256_blocks_ce(u32 state[8], const u8 *data, u64 nblocks);

/* purgatory.c */
void *memcpy(void *dst, const void *src, unsigned long n);
void *memset(void *dst, int c, unsigned long n);
int memcmp(const void *a, const void *b, unsigned long n);
void pg_main(void);
void pg_refuse(void) __attribute__((noreturn));

#pragma GCC visibility pop

#endif /* __ASSEMBLER__ */
#endif /* PYKEXEC_PURGATORY_ARM64_H */
