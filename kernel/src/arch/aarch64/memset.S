// memset for the kernel (replaces compiler_builtins' weak one, which stores 8 bytes per loop
// iteration). Like Linux's arch/arm64/lib/memset.S it uses general registers only (no FP/SIMD
// state in the kernel) and overlapping unaligned stores at both ends; 64 bytes per iteration
// in the middle, 16-byte aligned. Normal memory only (unaligned stores).
//
//   x0 = dst (returned), w1 = byte, x2 = count
    .section .text.memset, "ax"
    .global memset
    .type memset, %function
    .balign 16
memset:
    and     x1, x1, #0xff
    mov     x3, #0x0101010101010101
    mul     x1, x1, x3              // the byte in every lane
    add     x6, x0, x2              // end
    cmp     x2, #16
    b.lo    .Lsmall
    stp     x1, x1, [x0]            // head [dst, dst + 16)
    cmp     x2, #32
    b.ls    .Ltail                  // 16..32: head and tail cover it
    and     x5, x0, #~15
    add     x5, x5, #16             // first 16-byte boundary after dst: [dst, x5) done
    sub     x7, x6, #64
    cmp     x5, x7
    b.hi    2f
1:  stp     x1, x1, [x5]
    stp     x1, x1, [x5, #16]
    stp     x1, x1, [x5, #32]
    stp     x1, x1, [x5, #48]
    add     x5, x5, #64
    cmp     x5, x7
    b.ls    1b
2:  sub     x7, x6, #16
    cmp     x5, x7
    b.hs    .Ltail
3:  stp     x1, x1, [x5], #16
    cmp     x5, x7
    b.lo    3b
.Ltail:
    stp     x1, x1, [x6, #-16]      // tail [end - 16, end)
    ret
.Lsmall:                            // 0..15 bytes
    tbz     x2, #3, 4f
    str     x1, [x0]                // 8..15: [0, 8) and [n - 8, n)
    str     x1, [x6, #-8]
    ret
4:  tbz     x2, #2, 5f
    str     w1, [x0]                // 4..7
    str     w1, [x6, #-4]
    ret
5:  cbz     x2, 6f
    strb    w1, [x0]                // 1..3: [0, 1) and, for 2 or 3, [n - 2, n)
    tbz     x2, #1, 6f
    strh    w1, [x6, #-2]
6:  ret
    .size memset, . - memset
