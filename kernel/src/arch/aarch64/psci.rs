//! PSCI through the conduit the device tree names (/psci method = "hvc" or "smc").
use core::arch::asm;
use core::sync::atomic::{AtomicU8, Ordering};

pub const PSCI_VERSION: u64 = 0x8400_0000;
pub const CPU_OFF: u64 = 0x8400_0002;
pub const CPU_ON_64: u64 = 0xc400_0003;
pub const SYSTEM_OFF: u64 = 0x8400_0008;
pub const SYSTEM_RESET: u64 = 0x8400_0009;

/// 0 = none, 1 = hvc, 2 = smc.
static CONDUIT: AtomicU8 = AtomicU8::new(0);

pub fn set_conduit(c: Option<bootcfg::dt::PsciConduit>) {
    let v = match c {
        None => 0,
        Some(bootcfg::dt::PsciConduit::Hvc) => 1,
        Some(bootcfg::dt::PsciConduit::Smc) => 2,
    };
    CONDUIT.store(v, Ordering::Relaxed);
}

pub fn available() -> bool {
    CONDUIT.load(Ordering::Relaxed) != 0
}

/// One SMCCC call; returns x0 (negative PSCI error codes as i64), or None without a conduit.
pub fn call(fid: u64, a1: u64, a2: u64, a3: u64) -> Option<i64> {
    let mut r = fid;
    match CONDUIT.load(Ordering::Relaxed) {
        // SAFETY: an SMCCC call through HVC with the PSCI function id and its arguments; the
        // firmware clobbers at most x0-x7 (declared), and no memory of ours.
        1 => unsafe {
            asm!("hvc #0", inout("x0") r, inout("x1") a1 => _, inout("x2") a2 => _, inout("x3") a3 => _,
                 out("x4") _, out("x5") _, out("x6") _, out("x7") _, options(nostack))
        },
        // SAFETY: as above, through SMC (the conduit the device tree names).
        2 => unsafe {
            asm!("smc #0", inout("x0") r, inout("x1") a1 => _, inout("x2") a2 => _, inout("x3") a3 => _,
                 out("x4") _, out("x5") _, out("x6") _, out("x7") _, options(nostack))
        },
        _ => return None,
    }
    Some(r as i64)
}

pub fn error_name(e: i64) -> &'static str {
    match e {
        0 => "SUCCESS",
        -1 => "NOT_SUPPORTED",
        -2 => "INVALID_PARAMETERS",
        -3 => "DENIED",
        -4 => "ALREADY_ON",
        -5 => "ON_PENDING",
        -6 => "INTERNAL_FAILURE",
        -7 => "NOT_PRESENT",
        -8 => "DISABLED",
        -9 => "INVALID_ADDRESS",
        _ => "unknown error",
    }
}
