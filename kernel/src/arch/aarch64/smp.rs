//! Secondary CPU entry data shared with head.S (`secondary_entry`, `secondary_switched`).

/// Read by a secondary with its MMU off (so written back to memory with `dc civac` first).
#[repr(C)]
pub struct SecondaryBootData {
    pub ttbr0: u64,
    pub ttbr1: u64,
    pub stack_top: u64,
    pub cpu: u64,
}

#[unsafe(no_mangle)]
#[allow(non_upper_case_globals)]
pub static mut secondary_boot_data: SecondaryBootData =
    SecondaryBootData { ttbr0: 0, ttbr1: 0, stack_top: 0, cpu: 0 };
