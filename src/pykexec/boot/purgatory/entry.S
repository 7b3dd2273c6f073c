/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * pykexec purgatory entry, x86_64.
 *
 * The kernel's relocate_kernel (arch/x86/kernel/relocate_kernel_64.S) jumps here
 * in 64-bit mode, on its identity-mapped page tables, with interrupts off, every
 * general register zero, CR4 = PAE (| LA57), and the old kernel's GDT, which may
 * already be overwritten.  We:
 *
 *   1. take our own stack and load our own GDT (64-bit code 0x10 = __BOOT_CS, data
 *      0x18 = __BOOT_DS, and at 0x08 the flat 32-bit code descriptor that replaces
 *      0x10 for a 32-bit entry);
 *   2. enable SSE (CR4.OSFXSR) for the SHA-NI path and call pg_main, which hashes
 *      every region and halts in pg_refuse on a mismatch;
 *   3. restore CR0/CR4 and enter the next image:
 *        - 64-bit (Linux, boot.rst "64-bit Boot Protocol"): every register from
 *          pg_params.regs, rip last (rsi = boot_params);
 *        - 32-bit (PG_ENTRY32: Multiboot 1 and 2 "Machine state", Linux's "32-bit
 *          Boot Protocol"): make 0x10 a flat 32-bit code segment (__BOOT_CS, as
 *          the Linux protocol requires), drop to compatibility mode through it,
 *          turn paging and EFER.LME off, and jump with eax, ebx and esi from
 *          pg_params.regs (Multiboot: magic and information structure; Linux:
 *          esi = boot_params) and ecx, edx, edi, ebp zero, CS/DS flat 4 GiB.
 *        - real mode (PG_ENTRY16: Linux's "Running the Kernel" through its 16-bit setup
 *          code, which calls the BIOS, as iPXE's ipxe.lkrn needs): the 32-bit path,
 *          then 16-bit segments, CR0.PE off, the BIOS's interrupt table at 0 and its
 *          8259/8254 setup back, and a far jump with the segments of
 *          pg_params.real_mode and the general registers of pg_params.regs.
 *
 * Everything is position independent (RIP-relative), so the image runs wherever
 * the planner put it; PG_ENTRY32 needs that to be below 4 GiB, PG_ENTRY16 below
 * 1 MiB (the real-mode code addresses itself and pg_params from its own segment).
 */
#include "purgatory.h"

#define CR0_PE		(1 << 0)
#define CR0_MP		(1 << 1)
#define CR0_EM		(1 << 2)
#define CR0_TS		(1 << 3)
#define CR0_PG		(1 << 31)
#define CR4_OSFXSR	(1 << 9)
#define CR4_OSXMMEXCPT	(1 << 10)
#define MSR_EFER	0xc0000080
#define EFER_LME	(1 << 8)

	.section .text.entry, "ax"
	.code64
	.globl	_start
_start:
	.byte	0xe9				/* jmp rel32: a fixed size keeps the header in place */
	.long	purgatory_start - (_start + 5)
	.byte	0xcc, 0xcc, 0xcc
	/* The header pykexec reads: offsets are from _start. */
pg_header:
	.ascii	"PYKXPURG"
	.long	PG_VERSION
	.long	PG_HEADER_SIZE
	.long	pg_params - _start
	.long	PG_PARAMS_SIZE
	.long	_image_end - _start		/* bytes in purgatory.bin */
	.long	_end - _start			/* bytes in memory, with .bss and the stack */
	.long	pg_stack_end - _start
	.long	pg_sha256 - _start		/* host tests call these two */
	.long	pg_cpu_has_shani - _start
	.long	pg_refuse - _start		/* the halt loop after a mismatch */
	.long	PG_MAX_REGIONS
	.long	0
	.org	PG_HEADER_SIZE, 0xcc		/* fails to assemble if the header outgrew it */

purgatory_start:
	cli
	cld
	leaq	pg_stack_end(%rip), %rsp

	/* Our GDT; the descriptor's base is our own address, known only now. */
	leaq	pg_gdt(%rip), %rax
	movq	%rax, pg_gdt_desc+2(%rip)
	lgdt	pg_gdt_desc(%rip)
	leaq	1f(%rip), %rax
	pushq	$PG_CS
	pushq	%rax
	lretq
1:	movl	$PG_DS, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%eax, %fs
	movl	%eax, %gs

	/* SSE for sha256rnds2 & co: CR4.OSFXSR, CR0.MP, and no EM/TS. */
	movq	%cr4, %r12
	movq	%r12, %rax
	orq	$(CR4_OSFXSR | CR4_OSXMMEXCPT), %rax
	movq	%rax, %cr4
	movq	%cr0, %r13
	movq	%r13, %rax
	andq	$~(CR0_EM | CR0_TS), %rax
	orq	$CR0_MP, %rax
	movq	%rax, %cr0

	call	pg_main			/* returns only if every region matched */

	movq	%r13, %cr0
	movq	%r12, %cr4

	leaq	pg_params(%rip), %rax
	testl	$PG_ENTRY16, PG_FLAGS(%rax)
	jnz	enter16
	testl	$PG_ENTRY32, PG_FLAGS(%rax)
	jnz	enter32

	/* 64-bit entry: every register from pg_params.regs, rip through the stack. */
	leaq	PG_REGS(%rax), %rax
	movq	PG_RSP(%rax), %rcx
	testq	%rcx, %rcx
	jz	2f
	movq	%rcx, %rsp
2:	pushq	PG_RIP(%rax)
	movq	PG_RBX(%rax), %rbx
	movq	PG_RCX(%rax), %rcx
	movq	PG_RDX(%rax), %rdx
	movq	PG_RSI(%rax), %rsi
	movq	PG_RDI(%rax), %rdi
	movq	PG_RBP(%rax), %rbp
	movq	PG_R8(%rax), %r8
	movq	PG_R9(%rax), %r9
	movq	PG_R10(%rax), %r10
	movq	PG_R11(%rax), %r11
	movq	PG_R12(%rax), %r12
	movq	PG_R13(%rax), %r13
	movq	PG_R14(%rax), %r14
	movq	PG_R15(%rax), %r15
	movq	PG_RAX(%rax), %rax
	ret

enter16:
	/* The real-mode code's segment is its own address: CS16's base, and the far pointer
	 * that reloads CS in real mode.  It must lie below 1 MiB (the planner's job). */
	leaq	pg_real16(%rip), %rbp
	cmpq	$0x100000 - 0x10000, %rbp
	jae	pg_refuse
	movl	%ebp, %ecx
	movw	%cx, pg_gdt + PG_CS16 + 2(%rip)
	shrl	$16, %ecx
	movb	%cl, pg_gdt + PG_CS16 + 4(%rip)
	movl	%ebp, %ecx
	shrl	$4, %ecx
	movw	%cx, pg_real16_far + 2(%rip)
	jmp	leave64			/* the 32-bit path, whose "entry" (ebp) is pg_real16 */

enter32:
	/* eax = magic, ebx = info structure, esi = boot_params, eip = entry; edi/ebp carry
	 * eax and eip over the rdmsr/wrmsr below. */
	leaq	PG_REGS(%rax), %rax
	movl	PG_RBX(%rax), %ebx
	movl	PG_RSI(%rax), %esi
	movl	PG_RAX(%rax), %edi
	movl	PG_RIP(%rax), %ebp
leave64:
	/* __BOOT_CS becomes 32-bit code: the Linux 32-bit protocol enters with CS = 0x10. */
	movq	pg_gdt + PG_CS32(%rip), %rcx
	movq	%rcx, pg_gdt + PG_CS(%rip)
	leaq	3f(%rip), %rcx
	pushq	$PG_CS
	pushq	%rcx
	lretq
	.code32
3:	movl	$PG_DS, %ecx
	movl	%ecx, %ds
	movl	%ecx, %es
	movl	%ecx, %ss
	movl	%ecx, %fs
	movl	%ecx, %gs
	movl	%cr0, %ecx		/* paging off: we leave IA-32e mode here */
	andl	$~CR0_PG, %ecx
	movl	%ecx, %cr0
	movl	$MSR_EFER, %ecx
	rdmsr
	andl	$~EFER_LME, %eax
	wrmsr
	xorl	%ecx, %ecx		/* no PAE, no LA57, nothing */
	movl	%ecx, %cr4
	pushl	%ebp			/* the entry, for the ret: our stack is below 4 GiB */
	xorl	%edx, %edx
	xorl	%ebp, %ebp
	movl	%edi, %eax
	xorl	%edi, %edi
	ret
	.code64

	/* A segment did not match: never return, never jump. */
	.globl	pg_refuse
pg_refuse:
	cli
4:	hlt
	jmp	4b

	/* Reset: the PCI reset control register, the keyboard controller, then a triple fault. */
	.globl	pg_reset
pg_reset:
	cli
	movw	$0xcf9, %dx
	movb	$0x02, %al
	outb	%al, %dx
	movb	$0x06, %al
	outb	%al, %dx
	movl	$100000, %ecx
5:	pause
	loop	5b
	movb	$0xfe, %al
	outb	%al, $0x64
	movl	$100000, %ecx
6:	pause
	loop	6b
	lidt	pg_null_idt(%rip)
	int3
	jmp	pg_refuse

	.data
	/* The real-mode step, entered from the 32-bit path (paging off) at pg_real16.  It sits in
	 * .data beside pg_params, so that every address it uses is an offset from pg_real16, which
	 * is its real-mode segment's base. */
	.balign	16
pg_real16:
	.code32
	ljmp	$PG_CS16, $(7f - pg_real16)
	.code16
7:	movw	$PG_DS16, %ax		/* real-mode limits (64 KiB) in every segment register */
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movw	%ax, %fs
	movw	%ax, %gs
	movl	%cr0, %eax
	andl	$~CR0_PE, %eax
	movl	%eax, %cr0
	ljmpw	*%cs:(pg_real16_far - pg_real16)
8:	lidtw	%cs:(pg_real_idt - pg_real16)	/* the BIOS's interrupt vectors at 0 */
	/* The 8259s and 8254 as POST leaves them: Linux moved IRQ 0-15 to vectors 0x30-0x3f and may
	 * have stopped the timer.  IRQ 0-7 at int 0x08, 8-15 at int 0x70, masked but the timer and
	 * the cascade; channel 0 in mode 3 at 18.2 Hz. Interrupts stay off: the image turns them on. */
	movb	$0x11, %al		/* ICW1: edge, cascade, ICW4 follows */
	outb	%al, $0x20
	outb	%al, $0xa0
	movb	$0x08, %al		/* ICW2: vector bases */
	outb	%al, $0x21
	movb	$0x70, %al
	outb	%al, $0xa1
	movb	$0x04, %al		/* ICW3: the slave on IRQ 2 */
	outb	%al, $0x21
	movb	$0x02, %al
	outb	%al, $0xa1
	movb	$0x01, %al		/* ICW4: 8086 mode */
	outb	%al, $0x21
	outb	%al, $0xa1
	movb	$0xfa, %al		/* masks */
	outb	%al, $0x21
	movb	$0xff, %al
	outb	%al, $0xa1
	movb	$0x36, %al		/* 8254 channel 0: lobyte/hibyte, mode 3, count 65536 */
	outb	%al, $0x43
	xorb	%al, %al
	outb	%al, $0x40
	outb	%al, $0x40
	movl	%cs:(pg_params + PG_REGS + PG_RAX - pg_real16), %eax
	movl	%cs:(pg_params + PG_REGS + PG_RBX - pg_real16), %ebx
	movl	%cs:(pg_params + PG_REGS + PG_RCX - pg_real16), %ecx
	movl	%cs:(pg_params + PG_REGS + PG_RDX - pg_real16), %edx
	movl	%cs:(pg_params + PG_REGS + PG_RSI - pg_real16), %esi
	movl	%cs:(pg_params + PG_REGS + PG_RDI - pg_real16), %edi
	movl	%cs:(pg_params + PG_REGS + PG_RBP - pg_real16), %ebp
	movw	%cs:(pg_params + PG_REAL_MODE + PG_RM_ES - pg_real16), %es
	movw	%cs:(pg_params + PG_REAL_MODE + PG_RM_FS - pg_real16), %fs
	movw	%cs:(pg_params + PG_REAL_MODE + PG_RM_GS - pg_real16), %gs
	movw	%cs:(pg_params + PG_REAL_MODE + PG_RM_SS - pg_real16), %ss
	movzwl	%cs:(pg_params + PG_REAL_MODE + PG_RM_SP - pg_real16), %esp
	movw	%cs:(pg_params + PG_REAL_MODE + PG_RM_DS - pg_real16), %ds
	ljmpw	*%cs:(pg_params + PG_REAL_MODE + PG_RM_IP - pg_real16)
	.code64
	.balign	4
pg_real16_far:				/* 8b in real mode: the segment is patched */
	.word	8b - pg_real16
	.word	0
pg_real_idt:
	.word	0x400 - 1
	.long	0

	.balign	16
pg_gdt:					/* in .data: a 32-bit entry rewrites 0x10, a real-mode one 0x20's base */
	.quad	0				/* 0x00 null */
	.quad	0x00cf9a000000ffff		/* 0x08 32-bit code, base 0, 4 GiB: 0x10's for a 32-bit entry */
	.quad	0x00af9a000000ffff		/* 0x10 64-bit code (__BOOT_CS) */
	.quad	0x00cf92000000ffff		/* 0x18 data, base 0, 4 GiB (__BOOT_DS) */
	.quad	0x00009b000000ffff		/* 0x20 16-bit code, 64 KiB, base patched */
	.quad	0x000093000000ffff		/* 0x28 16-bit data, 64 KiB */
pg_gdt_end:
	.balign	16
pg_null_idt:
	.word	0
	.quad	0
	.balign	16
pg_gdt_desc:
	.word	pg_gdt_end - pg_gdt - 1
	.quad	0				/* patched with the GDT's address at run time */
	.balign	16
	.globl	pg_params
pg_params:
	.space	PG_PARAMS_SIZE

	.bss
	.balign	16
pg_stack:
	.space	PG_STACK_SIZE
pg_stack_end:

	.section .note.GNU-stack, "", @progbits
