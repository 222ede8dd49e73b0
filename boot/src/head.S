// Entry code: the arm64 Image header and the path from the loader's hand-off to Rust.
//
// Loaded at RAM base + 2 MiB (a different physical address per board) with the DTB's physical
// address in x0, at EL2 (Pi 4, raspi4b, virt with virtualization=on) or EL1 (virt). Until the
// MMU is on, everything here is position independent (adr/adrp); absolute addresses (the link
// addresses at KIMAGE_VADDR) are used only after the jump to primary_switched.
//
// Register use until primary_switched: x19 = DTB PA, x20 = PA of _head (image load address),
// x21 = TTBR0 root (identity map of the image), x22 = TTBR1 root (image at KIMAGE_VADDR).

    .equ    PTE_TABLE,      3
    .equ    PMD_BLOCK_NORMAL, 0x701           // valid block, AttrIndx 0 (MT_NORMAL), SH inner, AF
    .equ    SCTLR_EL1_RES1, 0x30d00800
    .equ    SCTLR_EL1_MMU_ON, 0x30d0181d      // RES1 | M | C | SA | SA0 | I
    .equ    MAIR_EL1_VAL,   0x000000040044ffff // Linux's MAIR: NORMAL, NORMAL_TAGGED, NORMAL_NC, DEVICE_nGnRnE, DEVICE_nGnRE
    .equ    TCR_EL1_VAL,    0xb5103510        // T0SZ=T1SZ=16 (48-bit), 4 KiB granules, WBWA inner-shareable walks
    .equ    IMAGE_BLOCKS,   15                // 2 MiB blocks mapped for the image (linker.ld asserts <= 30 MiB)
    .equ    FDT_L2_INDEX,   510               // DTB window: KIMAGE_VADDR + 510 * 2 MiB, two blocks

    .section .text.head, "ax"
    .global _head
_head:
    b       primary_entry                     // code0
    .long   0                                 // code1
    .quad   0                                 // text_offset: loaders add 2 MiB to RAM base
    .quad   _image_size                       // image_size (incl. bss): non-zero, so the header is honoured
    .quad   0xa                               // flags: little endian, 4 KiB pages, place anywhere
    .quad   0, 0, 0                           // res2..res4
    .ascii  "ARM\x64"                         // magic
    .long   0                                 // res5

primary_entry:
    mov     x19, x0
    adr     x20, _head
    tst     x20, #0x1fffff                    // Linux's booting rules: a 2 MiB aligned base
    b.ne    misaligned                        // (the early tables map 2 MiB blocks from it)
    bl      el2_to_el1
    bl      enable_fp
    bl      create_early_tables
    bl      enable_mmu
    ldr     x1, =primary_switched
    br      x1

// Secondary CPUs enter here (PSCI CPU_ON or spin table) with MMU off, at EL2 or EL1.
// x0 (PSCI context) is ignored: the logical CPU id and stack come from secondary_boot_data.
    .global secondary_entry
secondary_entry:
    bl      el2_to_el1
    bl      enable_fp
    adrp    x9, secondary_boot_data_pa_ptr
    ldr     x9, [x9, :lo12:secondary_boot_data_pa_ptr]                          // PA of kernel's secondary_boot_data
    ldr     x21, [x9, #0]                     // TTBR0 (identity map)
    ldr     x22, [x9, #8]                     // TTBR1 (kernel tables)
    bl      enable_mmu
    ldr     x1, =secondary_switched
    br      x1

// Leave EL2 for EL1 (the kernel runs at EL1 like Linux without VHE). Returns at EL1 to lr.
el2_to_el1:
    mrs     x9, CurrentEL
    cmp     x9, #(1 << 2)
    b.eq    1f
    cmp     x9, #(2 << 2)
    b.ne    park                              // EL3 (an ELF boot): not supported
    mov     x9, #(1 << 31)                    // HCR_EL2.RW: EL1 is AArch64
    msr     hcr_el2, x9
    mrs     x9, cnthctl_el2
    orr     x9, x9, #3                        // EL1PCTEN | EL1PCEN: EL1 may use the counter
    msr     cnthctl_el2, x9
    msr     cntvoff_el2, xzr
    mrs     x9, id_aa64pfr0_el1               // GICv3 system registers implemented?
    ubfx    x9, x9, #24, #4
    cbz     x9, 2f
    mrs     x9, icc_sre_el2                   // let EL1 use them (Linux __init_el2_gicv3)
    orr     x9, x9, #0x1                      // ICC_SRE_EL2.SRE
    orr     x9, x9, #0x8                      // ICC_SRE_EL2.Enable
    msr     icc_sre_el2, x9
    isb
    msr     ich_hcr_el2, xzr
2:  mov     x9, #0x33ff                       // CPTR_EL2: no FP/SIMD traps
    msr     cptr_el2, x9
    msr     hstr_el2, xzr
    mrs     x9, midr_el1
    msr     vpidr_el2, x9
    mrs     x9, mpidr_el1
    msr     vmpidr_el2, x9
    ldr     x9, =SCTLR_EL1_RES1
    msr     sctlr_el1, x9
    mov     x9, #0x3c5                        // EL1h, DAIF masked
    msr     spsr_el2, x9
    msr     elr_el2, lr
    eret
1:  ret

// The target emits NEON for ordinary code (memcpy, fmt): FP/SIMD must not trap before any Rust.
enable_fp:
    mov     x9, #(3 << 20)                    // CPACR_EL1.FPEN = 0b11
    msr     cpacr_el1, x9
    isb
    ret

// Six zeroed pages in .pgtbl: TTBR0 L0/L1/L2 identity-mapping the image with 2 MiB blocks
// (needed only while the MMU is switched on) and TTBR1 L0/L1/L2 mapping KIMAGE_VADDR onto the
// image plus a 4 MiB window onto the DTB. kernel::arch::mmu refines these once in Rust.
create_early_tables:
    adrp    x0, __pgtbl_start
    add     x0, x0, :lo12:__pgtbl_start
    mov     x1, x0
    add     x2, x0, #6, lsl #12
1:  stp     xzr, xzr, [x1], #16
    cmp     x1, x2
    b.lo    1b
    add     x3, x0, #0x1000                   // TTBR0 L1
    add     x4, x0, #0x2000                   // TTBR0 L2
    add     x5, x0, #0x3000                   // TTBR1 L0
    add     x6, x0, #0x4000                   // TTBR1 L1
    add     x7, x0, #0x5000                   // TTBR1 L2
    mov     x12, #PMD_BLOCK_NORMAL

    lsr     x9, x20, #39                      // identity map of the image
    and     x9, x9, #511
    orr     x10, x3, #PTE_TABLE
    str     x10, [x0, x9, lsl #3]
    lsr     x9, x20, #30
    and     x9, x9, #511
    orr     x10, x4, #PTE_TABLE
    str     x10, [x3, x9, lsl #3]
    lsr     x9, x20, #21
    and     x9, x9, #511
    mov     x10, x20
    mov     x11, #IMAGE_BLOCKS
2:  orr     x13, x10, x12
    str     x13, [x4, x9, lsl #3]
    add     x9, x9, #1
    add     x10, x10, #0x200000
    subs    x11, x11, #1
    b.ne    2b

    orr     x10, x6, #PTE_TABLE               // KIMAGE_VADDR: L0 index 511, L1 index 0
    str     x10, [x5, #(511 * 8)]
    orr     x10, x7, #PTE_TABLE
    str     x10, [x6]
    mov     x9, #0
    mov     x10, x20
    mov     x11, #IMAGE_BLOCKS
3:  orr     x13, x10, x12
    str     x13, [x7, x9, lsl #3]
    add     x9, x9, #1
    add     x10, x10, #0x200000
    subs    x11, x11, #1
    b.ne    3b

    and     x10, x19, #~0x1fffff              // DTB window (a DTB is at most 2 MiB)
    orr     x13, x10, x12
    str     x13, [x7, #(FDT_L2_INDEX * 8)]
    add     x10, x10, #0x200000
    orr     x13, x10, x12
    str     x13, [x7, #((FDT_L2_INDEX + 1) * 8)]

    // Written with the MMU and caches off: drop any stale (speculatively fetched) lines.
    mov     x1, x0
4:  dc      ivac, x1
    add     x1, x1, #64
    cmp     x1, x2
    b.lo    4b
    dsb     sy
    mov     x21, x0
    mov     x22, x5
    ret

// MMU on with x21/x22 as roots. Returns (to the identity-mapped physical lr).
enable_mmu:
    ldr     x9, =MAIR_EL1_VAL
    msr     mair_el1, x9
    ldr     x9, =TCR_EL1_VAL
    mrs     x10, id_aa64mmfr0_el1
    and     x10, x10, #7                      // PARange -> TCR_EL1.IPS
    bfi     x9, x10, #32, #3
    msr     tcr_el1, x9
    msr     ttbr0_el1, x21
    msr     ttbr1_el1, x22
    isb
    tlbi    vmalle1
    dsb     nsh
    isb
    ldr     x9, =SCTLR_EL1_MMU_ON
    msr     sctlr_el1, x9
    isb
    ic      iallu
    dsb     nsh
    isb
    ret

park:
    wfe
    b       park

// Loaded at an address that is not 2 MiB aligned (older Pi firmware, a wrong kernel_address=):
// the kernel cannot map itself. Say so through semihosting (QEMU -semihosting) and exit with
// status 2 (bad input); where semihosting is absent (a real board) the HLT traps into
// park_vectors and the CPU parks in WFE: nothing is printed, the board just stays silent (the
// README says so; config.txt's kernel_address must be 2 MiB aligned).
misaligned:
    adr     x9, park_vectors
    mrs     x10, CurrentEL
    cmp     x10, #(2 << 2)
    b.ne    1f
    msr     vbar_el2, x9
    b       2f
1:  msr     vbar_el1, x9
2:  isb
    mov     x0, #0x04                         // SYS_WRITE0
    adr     x1, misaligned_msg
    hlt     #0xf000
    mov     x0, #0x18                         // SYS_EXIT
    adr     x1, misaligned_exit
    hlt     #0xf000
    b       park

misaligned_msg:
    .asciz  "FATAL: kernel loaded at a physical address that is not 2 MiB aligned (arm64 booting rules); check kernel_address in config.txt\n"
    .balign 8
misaligned_exit:
    .quad   0x20026                           // ADP_Stopped_ApplicationExit
    .quad   2                                 // exit status: bad input

// Exceptions before the kernel's own vectors (only the semihosting probe above can take one):
// park the CPU.
    .balign 0x800
park_vectors:
    .rept   16
    .balign 0x80
    b       park
    .endr

    .ltorg

    .text
// Now running at KIMAGE_VADDR.
primary_switched:
    ldr     x1, =__boot_stack_top
    mov     sp, x1
    // Zero .bss (25 MiB: the boot heap and the per-CPU stacks) a cache-line block at a time
    // with DC ZVA where DCZID_EL0 allows it (Linux's memset does the same), else 64 bytes per
    // STP loop: one store per 8 bytes was 13 M instructions, over a third of the boot.
    ldr     x1, =__bss_start                  // 64-byte aligned (linker.ld)
    ldr     x2, =__bss_end                    // 64-byte aligned
    mrs     x3, dczid_el0
    tbnz    x3, #4, 3f                        // DZP: DC ZVA prohibited
    and     x3, x3, #0xf
    mov     x4, #4
    lsl     x4, x4, x3                        // block size in bytes
    cmp     x4, #64
    b.ne    3f                                // only the 64-byte block the alignment assumes
1:  cmp     x1, x2
    b.hs    2f
    dc      zva, x1
    add     x1, x1, #64
    b       1b
3:  cmp     x1, x2
    b.hs    2f
    stp     xzr, xzr, [x1]
    stp     xzr, xzr, [x1, #16]
    stp     xzr, xzr, [x1, #32]
    stp     xzr, xzr, [x1, #48]
    add     x1, x1, #64
    b       3b
2:  msr     tpidr_el1, xzr
    mov     x0, x19
    mov     x1, x20
    bl      boot_main
    b       park

secondary_switched:
    ldr     x9, =secondary_boot_data
    ldr     x1, [x9, #16]                     // stack top (VA)
    mov     sp, x1
    ldr     x0, [x9, #24]                     // logical CPU id
    msr     tpidr_el1, xzr                    // the per-CPU template until secondary_start
    bl      secondary_main
    b       park
    .ltorg

    .section .data
    .balign 8
// Filled in by the kernel before it wakes a secondary: PA of secondary_boot_data.
    .global secondary_boot_data_pa_ptr
secondary_boot_data_pa_ptr:
    .quad   0
