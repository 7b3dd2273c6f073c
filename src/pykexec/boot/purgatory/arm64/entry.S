/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * pykexec purgatory entry, arm64.
 *
 * The kernel's cpu_soft_restart / arm64_relocate_new_kernel
 * (arch/arm64/kernel/cpu-reset.S, relocate_kernel.S) branches here at EL2 or EL1
 * with the MMU and the D-cache off, so every data access is Device-nGnRnE: the C
 * code is built with -mstrict-align (an unaligned access would fault) and
 * -mgeneral-regs-only.  We:
 *
 *   1. mask every exception in PSTATE.DAIF and take our own stack (in .bss, inside
 *      the segment's memsz);
 *   2. let ourselves use FP/SIMD (CPACR_EL1.FPEN at EL1 and at EL2 with HCR_EL2.E2H,
 *      CPTR_EL2.TFP at EL2 otherwise) for the SHA-2 instructions, remembering the
 *      value we found;
 *   3. call pg_main, which hashes every region and stops in pg_refuse on a mismatch;
 *   4. put CPACR_EL1/CPTR_EL2 back and enter the kernel as
 *      Documentation/arch/arm64/booting.rst requires: x0 = the DTB, x1 = x2 = x3 = 0,
 *      MMU off, interrupts masked, at the exception level we were entered at.
 *
 * Nothing here turns the MMU or a cache on.  Everything is PC-relative (adr), so the
 * image runs wherever the planner put it.
 */
#include "purgatory.h"

#define HCR_EL2_E2H	34
#define CPTR_EL2_TFP	(1 << 10)
#define CPACR_FPEN	(3 << 20)

	.section .text.entry, "ax"
	.globl	_start
_start:
	b	purgatory_start			/* one instruction: the header stays in place */
	.long	0
	/* The header pykexec reads: offsets are from _start. */
pg_header:
	.ascii	"PYKXPA64"
	.long	PG_VERSION
	.long	PG_HEADER_SIZE
	.long	pg_params - _start
	.long	PG_PARAMS_SIZE
	.long	_image_end - _start		/* bytes in purgatory.bin */
	.long	_end - _start			/* bytes in memory, with .bss and the stack */
	.long	pg_stack_end - _start
	.long	pg_sha256 - _start		/* host tests call these two */
	.long	pg_cpu_has_sha2 - _start
	.long	pg_refuse - _start		/* the wait loop after a mismatch */
	.long	PG_MAX_REGIONS
	.long	0
	.org	PG_HEADER_SIZE, 0		/* fails to assemble if the header outgrew it */

purgatory_start:
	msr	daifset, #0xf
	adr	x9, pg_stack_end
	mov	sp, x9

	/* FP/SIMD access; x20 = the register's old value, x21 = which register (1 CPACR, 2 CPTR). */
	mrs	x9, CurrentEL
	cmp	x9, #(2 << 2)
	b.ne	1f
	mrs	x10, hcr_el2
	tbnz	x10, #HCR_EL2_E2H, 1f		/* VHE: cpacr_el1 names CPTR_EL2, in CPACR's format */
	mrs	x20, cptr_el2
	bic	x10, x20, #CPTR_EL2_TFP
	msr	cptr_el2, x10
	mov	x21, #2
	b	2f
1:	mrs	x20, cpacr_el1
	orr	x10, x20, #CPACR_FPEN
	msr	cpacr_el1, x10
	mov	x21, #1
2:	isb

	bl	pg_main				/* returns only if every region matched */

	cmp	x21, #2
	b.ne	3f
	msr	cptr_el2, x20
	b	4f
3:	msr	cpacr_el1, x20
4:	isb

	adr	x9, pg_params
	ldr	x17, [x9, #PG_ENTRY]
	ldr	x0, [x9, #PG_X0]
	mov	x1, xzr
	mov	x2, xzr
	mov	x3, xzr
	br	x17

	/* A segment did not match: never return, never jump. */
	.globl	pg_refuse
	.type	pg_refuse, %function
pg_refuse:
	msr	daifset, #0xf
5:	wfi
	b	5b
	.size	pg_refuse, . - pg_refuse

	.data
	.balign	16
	.globl	pg_params
pg_params:
	.space	PG_PARAMS_SIZE
	.balign	16				/* the file ends at _image_end */

	.bss
	.balign	16
pg_stack:
	.space	PG_STACK_SIZE
pg_stack_end:

	.section .note.GNU-stack, "", @progbits
