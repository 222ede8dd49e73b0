//! The bare-metal binary: the entry assembly (arm64 Image header, EL2 -> EL1, FP on, early page
//! tables, MMU on) and the two calls into the kernel library.
#![no_std]
#![no_main]

core::arch::global_asm!(include_str!("head.S"));

/// First Rust code on the boot CPU, running at its linked (high) address with the MMU on.
#[unsafe(no_mangle)]
extern "C" fn boot_main(dtb_pa: u64, kimage_pa: u64) -> ! {
    kernel::kmain(dtb_pa, kimage_pa)
}

/// First Rust code on a secondary CPU (see head.S secondary_entry).
#[unsafe(no_mangle)]
extern "C" fn secondary_main(cpu: u64) -> ! {
    kernel::secondary_main(cpu as usize)
}
