//! Arm semihosting (QEMU `-semihosting`): console output before a UART is known, and
//! SYS_EXIT with a status, the only way to hand a non-zero exit status to the host.
//!
//! Without a debugger or `-semihosting`, `hlt #0xf000` is an undefined instruction (real
//! hardware, or QEMU without the option). So the kernel never assumes it: `probe()` executes
//! one harmless call with the exception handler primed to skip it; only if it returns is
//! semihosting used. This makes the same image safe on a real Pi 4.
use core::arch::asm;
use core::sync::atomic::{AtomicU8, Ordering};

const SYS_WRITE0: u64 = 0x04;
const SYS_ERRNO: u64 = 0x13;
const SYS_EXIT: u64 = 0x18;
const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x20026;

/// 0 = not probed, 1 = present, 2 = absent.
static STATE: AtomicU8 = AtomicU8::new(0);
/// Set while probing, read by the exception handler.
pub(crate) static PROBING: AtomicU8 = AtomicU8::new(0);
/// Encoding of `hlt #0xf000`.
pub(crate) const HLT_F000: u32 = 0xd45e_0000;

/// One semihosting operation.
///
/// # Safety
/// `arg` must be what `op` expects: 0, or the address of a parameter block (and any buffers
/// it points to) that stays valid for the call. Semihosting must be available or probing
/// (PROBING = 1, so the exception handler skips the trap).
#[inline(never)]
unsafe fn call(op: u64, arg: u64) -> u64 {
    let r: u64;
    // SAFETY: a semihosting trap: the caller's contract (call's doc) makes arg a valid parameter
    // block for op; the host writes only x0.
    unsafe { asm!("hlt #0xf000", inout("x0") op => r, in("x1") arg, options(nostack)) };
    r
}

/// Finds out once whether semihosting works. Needs the exception vectors installed.
pub fn probe() -> bool {
    match STATE.load(Ordering::Relaxed) {
        1 => return true,
        2 => return false,
        _ => {}
    }
    PROBING.store(1, Ordering::SeqCst);
    // The exception handler sets x0 to u64::MAX and skips the instruction when it traps.
    // SAFETY: SYS_ERRNO takes no parameter block; if semihosting is absent the HLT traps and the
    // handler skips it (PROBING).
    let r = unsafe { call(SYS_ERRNO, 0) };
    let absent = PROBING.load(Ordering::SeqCst) == 2 || r == u64::MAX;
    PROBING.store(0, Ordering::SeqCst);
    STATE.store(if absent { 2 } else { 1 }, Ordering::Relaxed);
    !absent
}

pub fn present() -> bool {
    STATE.load(Ordering::Relaxed) == 1
}

/// Writes a string through SYS_WRITE0 (needs a NUL-terminated copy; chunks of 255 bytes).
pub fn write_str(s: &str) {
    if !present() {
        return;
    }
    let mut buf = [0u8; 256];
    for chunk in s.as_bytes().chunks(255) {
        buf[..chunk.len()].copy_from_slice(chunk);
        buf[chunk.len()] = 0;
        // SAFETY: buf is a NUL-terminated string on this stack, alive during the call.
        unsafe { call(SYS_WRITE0, buf.as_ptr() as u64) };
    }
}

/// SYS_EXIT with `code` as QEMU's exit status. Returns only if semihosting is absent.
pub fn exit(code: u32) {
    if !present() {
        return;
    }
    let block: [u64; 2] = [ADP_STOPPED_APPLICATION_EXIT, code as u64];
    // SAFETY: block is the two-word SYS_EXIT parameter block on this stack.
    unsafe { call(SYS_EXIT, block.as_ptr() as u64) };
}
