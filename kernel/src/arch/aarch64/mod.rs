//! AArch64: registers, barriers, exceptions, PSCI, semihosting, MMU glue.
//!
//! Memory layout (48-bit VA, 4 KiB granule; see linker.ld and boot/src/head.S):
//!
//! ```text
//! 0xffff_0000_0000_0000  PAGE_OFFSET   linear map of all RAM (block mappings where aligned)
//! 0xffff_8000_0000_0000  VMALLOC_START vmalloc / vmap / vm_map_ram / percpu chunks (124 TiB)
//! 0xffff_fc00_0000_0000  VMALLOC_END
//! 0xffff_fe00_0000_0000  FIXMAP_START  early device mappings (UART, watchdog)
//! 0xffff_ff80_0000_0000  KIMAGE_VADDR  kernel image (text RX, rodata R, data RW+XN)
//! 0xffff_ff80_3fc0_0000  FDT_VA        4 MiB window onto the DTB (head.S)
//! ```
pub mod cpu;
pub mod exception;
pub mod gic;
pub mod idle;
pub mod irq;
pub mod psci;
pub mod semihosting;
pub mod timer;

pub const PAGE_OFFSET: u64 = 0xffff_0000_0000_0000;
pub const VMALLOC_START: u64 = 0xffff_8000_0000_0000;
pub const VMALLOC_END: u64 = 0xffff_fc00_0000_0000;
pub const FIXMAP_START: u64 = 0xffff_fe00_0000_0000;
pub const KIMAGE_VADDR: u64 = 0xffff_ff80_0000_0000;
pub const FDT_VA: u64 = KIMAGE_VADDR + 510 * 0x20_0000;

pub use cpu::*;
pub mod mmu;

pub mod tlb;
pub use tlb::HwTlb;

// The kernel's memset (general registers, 64 bytes per iteration; overrides the weak one of
// compiler_builtins, which stores 8 bytes per iteration). Tested by kernel::ktests::kernel.
core::arch::global_asm!(include_str!("memset.S"));

static EXIT_HOOK: spin::Once<fn(u32)> = spin::Once::new();
static EXITING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// What `exit` runs first (the console's final line and drain).
pub fn set_exit_hook(f: fn(u32)) {
    EXIT_HOOK.call_once(|| f);
}

/// Ends the run with `code` as the exit status where the platform can report one: semihosting
/// SYS_EXIT (QEMU with -semihosting, probed at boot), else PSCI SYSTEM_OFF (virt, status 0),
/// else the Pi's PM watchdog power-off (as Linux's bcm2835_power_off), else park.
pub fn exit(code: u32) -> ! {
    // The console's last words (final line, UART drained) once, even if they fault.
    if !EXITING.swap(true, core::sync::atomic::Ordering::AcqRel) {
        if let Some(hook) = EXIT_HOOK.get() {
            hook(code);
        }
    }
    semihosting::exit(code);
    if psci::available() {
        psci::call(psci::SYSTEM_OFF, 0, 0, 0);
    }
    crate::board::power_off();
    loop {
        wfe_raw();
    }
}
pub mod smp;
