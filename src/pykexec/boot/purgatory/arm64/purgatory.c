// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * pykexec arm64 purgatory, the part in C: check every segment's SHA-256 before
 * the jump, as kexec-tools' purgatory/purgatory.c does (verify_sha256_digest).
 *
 * Each region carries its own digest, so a mismatch names the segment; the zero
 * padding after a segment's bytes (up to memsz) is compared with zero rather than
 * hashed, as in the x86_64 purgatory.  On a mismatch we print to the console UART
 * (a PL011 or an 8250 at pg_params.uart_base, which the old kernel has set up: we
 * only poll its transmit status, with a bound) and stop in pg_refuse.
 *
 * The MMU is off: every access here is Device-nGnRnE, so nothing may be unaligned
 * (-mstrict-align) and the UART registers need no barriers to stay in order.
 */
#include "purgatory.h"

#define PL011_DR	0x00
#define PL011_FR	0x18
#define PL011_FR_TXFF	0x20
#define UART_THR	0
#define UART_LSR	5
#define UART_LSR_THRE	0x20

void *memcpy(void *dst, const void *src, unsigned long n)
{
	u8 *d = dst;
	const u8 *s = src;

	while (n--)
		*d++ = *s++;
	return dst;
}

void *memset(void *dst, int c, unsigned long n)
{
	u8 *d = dst;

	while (n--)
		*d++ = c;
	return dst;
}

int memcmp(const void *a, const void *b, unsigned long n)
{
	const u8 *x = a, *y = b;

	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x - *y;
	return 0;
}

/* The first non-zero byte of [p, p + n), or 0 when all are zero. */
static const u8 *first_nonzero(const u8 *p, u64 n)
{
	const u8 *end = p + n;

	for (; p < end && ((unsigned long)p & 7); p++)
		if (*p)
			return p;
	for (; end - p >= 32; p += 32) {
		const u64 *q = (const u64 *)p;

		if (q[0] | q[1] | q[2] | q[3])
			break;
	}
	for (; p < end; p++)
		if (*p)
			return p;
	return 0;
}

static inline u64 counter(void)
{
	u64 v;

	asm volatile("isb; mrs %0, cntvct_el0" : "=r"(v) : : "memory");
	return v;
}

static inline u64 counter_frequency(void)
{
	u64 v;

	asm volatile("mrs %0, cntfrq_el0" : "=r"(v));
	return v;
}

static u32 uart_read(u64 offset)
{
	u64 addr = pg_params.uart_base + offset;

	switch (pg_params.uart_width) {
	case 4:
		return *(volatile u32 *)addr;
	case 2:
		return *(volatile u16 *)addr;
	default:
		return *(volatile u8 *)addr;
	}
}

static void uart_write(u64 offset, u32 v)
{
	u64 addr = pg_params.uart_base + offset;

	switch (pg_params.uart_width) {
	case 4:
		*(volatile u32 *)addr = v;
		break;
	case 2:
		*(volatile u16 *)addr = v;
		break;
	default:
		*(volatile u8 *)addr = v;
	}
}

static void putc(char ch)
{
	int spin;

	if (!pg_params.uart_base)
		return;
	switch (pg_params.uart_type) {
	case PG_UART_PL011:
		for (spin = 0; spin < 100000; spin++)
			if (!(uart_read(PL011_FR) & PL011_FR_TXFF))
				break;
		uart_write(PL011_DR, (u8)ch);
		break;
	case PG_UART_8250:
		for (spin = 0; spin < 100000; spin++)
			if (uart_read(UART_LSR << pg_params.uart_shift) & UART_LSR_THRE)
				break;
		uart_write(UART_THR << pg_params.uart_shift, (u8)ch);
		break;
	}
}

static void puts(const char *s)
{
	for (; *s; s++) {
		if (*s == '\n')
			putc('\r');
		putc(*s);
	}
}

static void puthex(u64 v, int digits)
{
	static const char hex[] = "0123456789abcdef";

	while (digits--)
		putc(hex[(v >> (4 * digits)) & 15]);
}

static void putdigest(const u8 d[32])
{
	int i;

	for (i = 0; i < 32; i++)
		puthex(d[i], 2);
}

static void __attribute__((noreturn)) fail(void)
{
	puts("pykexec purgatory: refusing to boot\n");
	pg_refuse();
}

void pg_main(void)
{
	struct pg_params *p = &pg_params;
	u32 nr = p->nr_regions, i, bad = 0;
	u64 bytes = 0, t0 = 0;
	u8 digest[32] __attribute__((aligned(8)));

	if (p->flags & PG_VERBOSE) {
		t0 = counter();		/* the generic timer is read only when asked to report */
		puts("pykexec purgatory: ");
		if (p->flags & PG_SKIP_CHECKS)
			puts("checks skipped\n");
		else
			puts(!(p->flags & PG_NO_SHA2) && pg_cpu_has_sha2() ?
			     "sha256 with the SHA-2 instructions\n" : "sha256 portable\n");
	}
	if (nr > PG_MAX_REGIONS) {
		puts("pykexec purgatory: corrupt parameters\n");
		fail();
	}
	if (!(p->flags & PG_SKIP_CHECKS)) {
		for (i = 0; i < nr; i++) {
			const struct pg_region *r = &p->regions[i];
			const u8 *nonzero;

			pg_sha256((const void *)r->start, r->len, digest, p->flags);
			nonzero = first_nonzero((const u8 *)(r->start + r->len), r->zero_len);
			bytes += r->len + r->zero_len;
			if (memcmp(digest, r->sha256, 32) == 0 && !nonzero)
				continue;
			bad++;
			puts("pykexec purgatory: segment ");
			puthex(i, 2);
			puts(" [0x");
			puthex(r->start, 16);
			puts("+0x");
			puthex(r->len + r->zero_len, 16);
			if (nonzero) {
				puts(") non-zero padding at 0x");
				puthex((u64)nonzero, 16);
				puts("\n");
				continue;
			}
			puts(") SHA-256 mismatch\n  expected ");
			putdigest(r->sha256);
			puts("\n  found    ");
			putdigest(digest);
			puts("\n");
		}
		if (bad) {
			puts("pykexec purgatory: verification failed\n");
			fail();
		}
	}
	if (p->flags & PG_VERBOSE) {
		puts("pykexec purgatory: ");
		puthex(nr, 2);
		puts(" segments verified (0x");
		puthex(bytes, 16);
		puts(" bytes in 0x");
		puthex(counter() - t0, 16);
		puts(" ticks of 0x");
		puthex(counter_frequency(), 8);
		puts(" Hz), entering 0x");
		puthex(p->entry, 16);
		puts(" with x0 0x");
		puthex(p->x0, 16);
		puts("\n");
	}
}
