// EL1 exception vectors: every entry saves the full register state (x0-x30, sp, elr, spsr,
// esr, far, q0-q31) into a frame on the current stack and calls handle_exception(frame, kind).
// Handlers that resume (the semihosting probe, expected-fault fixups) return here; the frame is
// restored, including any ELR/x0 the handler changed.
//
// Stack overflow (Linux arm64 kernel_ventry + __bad_stack): before saving anything the entry
// checks that the frame fits above this CPU's per-CPU `kernel_stack_lo` (0 = unchecked), using
// TPIDRRO_EL0/TPIDR_EL0 as scratch (no EL0 here). If it does not, the frame goes on the CPU's
// per-CPU overflow stack instead of into the guard page and below it.

    .equ    FRAME_SIZE, 800
    .equ    KIND_BAD_STACK, 16
    .equ    OVERFLOW_STACK_SIZE, 8192         // exception.rs asserts the same value

.macro ventry kind
    .balign 0x80
    sub     sp, sp, #FRAME_SIZE
    msr     tpidrro_el0, x0
    msr     tpidr_el0, x1
    adrp    x0, __kernel_stack_lo
    add     x0, x0, :lo12:__kernel_stack_lo
    mrs     x1, tpidr_el1
    ldr     x0, [x0, x1]                      // this CPU's kernel_stack_lo
    cmp     sp, x0
    mrs     x0, tpidrro_el0
    mrs     x1, tpidr_el0
    b.lo    __bad_stack
    stp     x0, x1, [sp, #0]
    mov     x0, #\kind
    b       exception_common
.endm

    .section .text.vectors, "ax"
    .balign 0x800
    .global exception_vectors
exception_vectors:
    ventry 0
    ventry 1
    ventry 2
    ventry 3
    ventry 4
    ventry 5
    ventry 6
    ventry 7
    ventry 8
    ventry 9
    ventry 10
    ventry 11
    ventry 12
    ventry 13
    ventry 14
    ventry 15

// The frame did not fit on the kernel stack: switch to the top of this CPU's overflow stack
// and report from there (never returns). The overflowed SP is left in TPIDR_EL0 for the report.
// A second overflow while already on the overflow stack restarts at its top.
__bad_stack:
    msr     tpidrro_el0, x0
    mov     x0, sp
    add     x0, x0, #FRAME_SIZE               // SP at the exception
    msr     tpidr_el0, x0
    adrp    x0, __overflow_stack
    add     x0, x0, :lo12:__overflow_stack
    mov     sp, x0                            // (sp is free to use as scratch now)
    mrs     x0, tpidr_el1
    add     sp, sp, x0
    add     sp, sp, #OVERFLOW_STACK_SIZE
    sub     sp, sp, #FRAME_SIZE
    mrs     x0, tpidrro_el0
    stp     x0, x1, [sp, #0]
    mov     x0, #KIND_BAD_STACK
    b       exception_common

exception_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    add     x1, sp, #FRAME_SIZE
    stp     x30, x1, [sp, #240]
    mrs     x1, elr_el1
    mrs     x2, spsr_el1
    stp     x1, x2, [sp, #256]
    mrs     x1, esr_el1
    mrs     x2, far_el1
    stp     x1, x2, [sp, #272]
    stp     q0, q1, [sp, #288]
    stp     q2, q3, [sp, #320]
    stp     q4, q5, [sp, #352]
    stp     q6, q7, [sp, #384]
    stp     q8, q9, [sp, #416]
    stp     q10, q11, [sp, #448]
    stp     q12, q13, [sp, #480]
    stp     q14, q15, [sp, #512]
    stp     q16, q17, [sp, #544]
    stp     q18, q19, [sp, #576]
    stp     q20, q21, [sp, #608]
    stp     q22, q23, [sp, #640]
    stp     q24, q25, [sp, #672]
    stp     q26, q27, [sp, #704]
    stp     q28, q29, [sp, #736]
    stp     q30, q31, [sp, #768]
    mov     x1, x0
    mov     x0, sp
    bl      handle_exception
    ldp     q0, q1, [sp, #288]
    ldp     q2, q3, [sp, #320]
    ldp     q4, q5, [sp, #352]
    ldp     q6, q7, [sp, #384]
    ldp     q8, q9, [sp, #416]
    ldp     q10, q11, [sp, #448]
    ldp     q12, q13, [sp, #480]
    ldp     q14, q15, [sp, #512]
    ldp     q16, q17, [sp, #544]
    ldp     q18, q19, [sp, #576]
    ldp     q20, q21, [sp, #608]
    ldp     q22, q23, [sp, #640]
    ldp     q24, q25, [sp, #672]
    ldp     q26, q27, [sp, #704]
    ldp     q28, q29, [sp, #736]
    ldp     q30, q31, [sp, #768]
    ldp     x1, x2, [sp, #256]
    msr     elr_el1, x1
    msr     spsr_el1, x2
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    ldr     x30, [sp, #240]
    ldp     x0, x1, [sp, #0]
    add     sp, sp, #FRAME_SIZE
    eret
