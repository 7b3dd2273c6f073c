/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * SHA-256 block function with the Intel SHA extensions (sha256rnds2, sha256msg1,
 * sha256msg2; CPUID.(EAX=7,ECX=0):EBX[29]) and SSSE3 (pshufb, palignr;
 * CPUID.1:ECX[9]); the state shuffles are plain SSE2.  The round structure is the one Intel
 * documents for these instructions ("Intel SHA Extensions", 2013): the state is
 * kept as ABEF/CDGH, each sha256rnds2 does two rounds with W+K in xmm0, and the
 * schedule for W[i+16] is formed with msg1/palignr/paddd/msg2 four rounds ahead.
 *
 *	void pg_sha256_blocks_ni(u32 state[8], const u8 *data, u64 nblocks)
 *
 * System V calling convention; clobbers rax, rdx, rsi, xmm0-xmm10 only.
 */

#define STATE_PTR	%rdi
#define DATA_PTR	%rsi
#define END_PTR		%rdx
#define KPTR		%rax

#define MSG		%xmm0		/* implicit operand of sha256rnds2 */
#define STATE0		%xmm1
#define STATE1		%xmm2
#define MSG0		%xmm3
#define MSG1		%xmm4
#define MSG2		%xmm5
#define MSG3		%xmm6
#define TMP		%xmm7
#define SHUF_MASK	%xmm8
#define ABEF_SAVE	%xmm9
#define CDGH_SAVE	%xmm10

/*
 * Rounds i..i+3.  m0 holds W[i..i+3]; m1..m3 the next three groups, which are
 * being completed: after these rounds m1 = W[i+4..i+7] has its final value.
 */
.macro rounds4 i, m0, m1, m2, m3
.if \i < 16
	movdqu		\i*4(DATA_PTR), \m0
	pshufb		SHUF_MASK, \m0
.endif
	movdqa		(\i-32)*4(KPTR), MSG
	paddd		\m0, MSG
	sha256rnds2	STATE0, STATE1
.if \i >= 12 && \i < 60
	movdqa		\m0, TMP
	palignr		$4, \m3, TMP
	paddd		TMP, \m1
	sha256msg2	\m0, \m1
.endif
	punpckhqdq	MSG, MSG
	sha256rnds2	STATE1, STATE0
.if \i >= 4 && \i < 52
	sha256msg1	\m0, \m3
.endif
.endm

	.text
	.globl	pg_sha256_blocks_ni
	.type	pg_sha256_blocks_ni, @function
pg_sha256_blocks_ni:
	shlq		$6, %rdx
	jz		.Ldone
	addq		DATA_PTR, END_PTR

	/* state[] is A..H as u32s: DCBA and HGFE in xmm lanes; we want ABEF, CDGH. */
	movdqu		0(STATE_PTR), STATE0		/* DCBA */
	movdqu		16(STATE_PTR), STATE1		/* HGFE */
	movdqa		STATE0, TMP
	punpcklqdq	STATE1, STATE0			/* FEBA */
	punpckhqdq	TMP, STATE1			/* DCHG */
	pshufd		$0x1b, STATE0, STATE0		/* ABEF */
	pshufd		$0xb1, STATE1, STATE1		/* CDGH */

	movdqa		.Lbswap_mask(%rip), SHUF_MASK
	leaq		.LK256+32*4(%rip), KPTR		/* so that (i-32)*4 fits a disp8 */

.Lblock:
	movdqa		STATE0, ABEF_SAVE
	movdqa		STATE1, CDGH_SAVE
.irp i, 0, 16, 32, 48
	rounds4		(\i + 0),  MSG0, MSG1, MSG2, MSG3
	rounds4		(\i + 4),  MSG1, MSG2, MSG3, MSG0
	rounds4		(\i + 8),  MSG2, MSG3, MSG0, MSG1
	rounds4		(\i + 12), MSG3, MSG0, MSG1, MSG2
.endr
	paddd		ABEF_SAVE, STATE0
	paddd		CDGH_SAVE, STATE1
	addq		$64, DATA_PTR
	cmpq		END_PTR, DATA_PTR
	jne		.Lblock

	/* ABEF, CDGH back to DCBA, HGFE. */
	movdqa		STATE0, TMP
	punpcklqdq	STATE1, STATE0			/* GHEF */
	punpckhqdq	TMP, STATE1			/* ABCD */
	pshufd		$0xb1, STATE0, STATE0		/* HGFE */
	pshufd		$0x1b, STATE1, STATE1		/* DCBA */
	movdqu		STATE1, 0(STATE_PTR)
	movdqu		STATE0, 16(STATE_PTR)
.Ldone:
	ret
	.size	pg_sha256_blocks_ni, . - pg_sha256_blocks_ni

	.section .rodata
	.balign	16
.Lbswap_mask:
	.octa	0x0c0d0e0f08090a0b0405060700010203
.LK256:
	.long	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5
	.long	0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5
	.long	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3
	.long	0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174
	.long	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc
	.long	0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da
	.long	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7
	.long	0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967
	.long	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13
	.long	0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85
	.long	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3
	.long	0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070
	.long	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5
	.long	0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3
	.long	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208
	.long	0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2

	.section .note.GNU-stack, "", @progbits
