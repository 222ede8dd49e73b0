//! Exception handling: IRQs go to `irq::handle_irq`; anything else gets a report naming what
//! happened (ESR, FAR, ELR, the exception class in words, the CPU) and a non-zero exit. Two cases resume instead: the semihosting probe, and a
//! fault inside an expected-fault section (in-kernel tests of guard pages), which jumps to the
//! registered fixup like Linux's exception tables.
use core::sync::atomic::{AtomicU64, Ordering};

core::arch::global_asm!(include_str!("exception.S"));

/// Register state saved by exception.S (layout shared with it: FRAME_SIZE = 800).
#[repr(C)]
pub struct Frame {
    pub x: [u64; 31],
    pub sp: u64,
    pub elr: u64,
    pub spsr: u64,
    pub esr: u64,
    pub far: u64,
    pub q: [u128; 32],
}
const _: () = assert!(core::mem::size_of::<Frame>() == 800);

/// The `kind` exception.S passes when the frame did not fit on the kernel stack.
const KIND_BAD_STACK: u64 = 16;
/// Per-CPU overflow stack (Linux: OVERFLOW_STACK_SIZE is 4 KiB; the report's formatting needs
/// a little more here). Same value as in exception.S.
pub const OVERFLOW_STACK_SIZE: usize = 8192;

#[repr(C, align(16))]
pub struct OverflowStack([u8; OVERFLOW_STACK_SIZE]);

crate::define_per_cpu! {
    /// Lowest SP of this CPU's kernel stack, compared against by every exception entry
    /// (0: unchecked, before the CPU called `set_kernel_stack`).
    #[unsafe(export_name = "__kernel_stack_lo")]
    pub static KERNEL_STACK_LO: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
}
crate::define_per_cpu! {
    /// Linux `overflow_stack`: where an exception whose frame would not fit goes.
    #[unsafe(export_name = "__overflow_stack")]
    pub static OVERFLOW_STACK: OverflowStack = OverflowStack([0; OVERFLOW_STACK_SIZE]);
}
crate::define_per_cpu! {
    static KERNEL_STACK_HI: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
}
crate::define_per_cpu! {
    /// Set while this CPU reports an overflow (an overflow of the report itself exits at once).
    static IN_BAD_STACK: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
}

/// Records this CPU's kernel stack [lo, hi) for the overflow check. Call once the per-CPU
/// offset is set (the values live in this CPU's per-CPU area).
pub fn set_kernel_stack(lo: u64, hi: u64) {
    KERNEL_STACK_HI.this_cpu().store(hi, Ordering::Relaxed);
    KERNEL_STACK_LO.this_cpu().store(lo, Ordering::Relaxed);
}

const KIND_NAMES: [&str; 16] = [
    "synchronous (EL1t)",
    "IRQ (EL1t)",
    "FIQ (EL1t)",
    "SError (EL1t)",
    "synchronous",
    "IRQ",
    "FIQ",
    "SError",
    "synchronous (lower EL, AArch64)",
    "IRQ (lower EL, AArch64)",
    "FIQ (lower EL, AArch64)",
    "SError (lower EL, AArch64)",
    "synchronous (lower EL, AArch32)",
    "IRQ (lower EL, AArch32)",
    "FIQ (lower EL, AArch32)",
    "SError (lower EL, AArch32)",
];

/// The exception class (ESR_EL1.EC) in words.
pub fn ec_name(ec: u64) -> &'static str {
    match ec {
        0x00 => "unknown reason (undefined instruction)",
        0x01 => "trapped WFI/WFE",
        0x07 => "access to SIMD/FP trapped",
        0x0e => "illegal execution state",
        0x15 => "SVC from AArch64",
        0x16 => "HVC from AArch64",
        0x17 => "SMC from AArch64",
        0x18 => "trapped MSR/MRS/system instruction",
        0x20 => "instruction abort from a lower EL",
        0x21 => "instruction abort (same EL)",
        0x22 => "PC alignment fault",
        0x24 => "data abort from a lower EL",
        0x25 => "data abort (same EL)",
        0x26 => "SP alignment fault",
        0x2c => "trapped floating-point exception",
        0x2f => "SError interrupt",
        0x30 | 0x31 => "breakpoint",
        0x32 | 0x33 => "software step",
        0x34 | 0x35 => "watchpoint",
        0x3c => "BRK instruction",
        _ => "reserved/other exception class",
    }
}

/// Data/instruction fault status code (ESR ISS[5:0]) in words.
pub fn fsc_name(fsc: u64) -> &'static str {
    match fsc {
        0x00..=0x03 => "address size fault",
        0x04..=0x07 => "translation fault",
        0x09..=0x0b => "access flag fault",
        0x0d..=0x0f => "permission fault",
        0x10 => "synchronous external abort",
        0x21 => "alignment fault",
        0x30 => "TLB conflict abort",
        _ => "other fault",
    }
}

/// Expected-fault section of the running CPU: (fixup PC, recorded FAR and ESR).
struct Fixup {
    pc: AtomicU64,
    far: AtomicU64,
    esr: AtomicU64,
}
crate::define_per_cpu! {
    static FIXUP: Fixup = Fixup { pc: AtomicU64::new(0), far: AtomicU64::new(0), esr: AtomicU64::new(0) };
}

/// Hook that names what a faulting address belongs to (vmalloc area, guard page, stack guard).
static FAULT_DESCRIBER: spin::Once<fn(u64, &mut dyn core::fmt::Write)> = spin::Once::new();

pub fn set_fault_describer(f: fn(u64, &mut dyn core::fmt::Write)) {
    FAULT_DESCRIBER.call_once(|| f);
}

/// Reads `*addr` and reports whether it faulted, with the fault's report text captured in
/// `report` (in-kernel tests of guard pages and use-after-free). Nothing else may fault inside.
pub fn probe_read(addr: *const u8, report: &mut alloc::string::String) -> Option<u8> {
    let val: u64;
    let faulted: u64;
    // SAFETY: the load runs with this CPU's fixup slot armed: if addr is not mapped the fault
    // handler records the fault and resumes at label 2 (no Rust state is touched in between); a
    // mapped address is only read.
    unsafe {
        core::arch::asm!(
            "adr {tmp}, 2f",
            "str {tmp}, [{slot}]",
            "mov {faulted}, #0",
            "ldrb {val:w}, [{addr}]",
            "b 3f",
            "2: mov {faulted}, #1",
            "mov {val}, #0",
            "3: str xzr, [{slot}]",
            tmp = out(reg) _,
            slot = in(reg) &FIXUP.this_cpu().pc as *const AtomicU64 as u64,
            faulted = out(reg) faulted,
            val = out(reg) val,
            addr = in(reg) addr,
            options(nostack),
        );
    }
    if faulted != 0 {
        let far = FIXUP.this_cpu().far.load(Ordering::Relaxed);
        let esr = FIXUP.this_cpu().esr.load(Ordering::Relaxed);
        use core::fmt::Write;
        let _ = write!(report, "{} at {:#x}: {}", ec_name(esr >> 26), far, fsc_name(esr & 0x3f));
        if let Some(d) = FAULT_DESCRIBER.get() {
            let _ = report.write_str(": ");
            d(far, report);
        }
        None
    } else {
        Some(val as u8)
    }
}

/// Writes `val` to `*addr`; true if it faulted (see probe_read).
///
/// # Safety
/// If `addr` is mapped, writing `val` there must be allowed: the byte belongs to the caller
/// (an area it allocated, or one it freed and expects to fault), nobody else uses it.
pub unsafe fn probe_write(addr: *mut u8, val: u8, report: &mut alloc::string::String) -> bool {
    let faulted: u64;
    // SAFETY: as probe_read: a fault resumes at the fixup; a mapped address is written, which is
    // the caller's contract (see the doc).
    unsafe {
        core::arch::asm!(
            "adr {tmp}, 2f",
            "str {tmp}, [{slot}]",
            "mov {faulted}, #0",
            "strb {val:w}, [{addr}]",
            "b 3f",
            "2: mov {faulted}, #1",
            "3: str xzr, [{slot}]",
            tmp = out(reg) _,
            slot = in(reg) &FIXUP.this_cpu().pc as *const AtomicU64 as u64,
            faulted = out(reg) faulted,
            val = in(reg) val as u64,
            addr = in(reg) addr,
            options(nostack),
        );
    }
    if faulted != 0 {
        let far = FIXUP.this_cpu().far.load(Ordering::Relaxed);
        let esr = FIXUP.this_cpu().esr.load(Ordering::Relaxed);
        use core::fmt::Write;
        let _ = write!(report, "{} at {:#x}: {}", ec_name(esr >> 26), far, fsc_name(esr & 0x3f));
        if let Some(d) = FAULT_DESCRIBER.get() {
            let _ = report.write_str(": ");
            d(far, report);
        }
    }
    faulted != 0
}

#[unsafe(no_mangle)]
extern "C" fn handle_exception(frame: &mut Frame, kind: u64) {
    if kind == KIND_BAD_STACK {
        handle_bad_stack(frame);
    }
    // IRQ from EL1 with SP_EL1 (the only place interrupts are unmasked).
    if kind == 5 {
        super::irq::handle_irq();
        return;
    }
    let ec = frame.esr >> 26;
    // The semihosting probe: an undefined `hlt #0xf000` means no semihosting. Skip it.
    if kind == 4 && ec == 0 && super::semihosting::PROBING.load(Ordering::SeqCst) == 1 {
        // SAFETY: ELR points at the instruction that trapped, which is kernel text (mapped,
        // readable).
        let insn = unsafe { core::ptr::read_volatile(frame.elr as *const u32) };
        if insn == super::semihosting::HLT_F000 {
            super::semihosting::PROBING.store(2, Ordering::SeqCst);
            frame.x[0] = u64::MAX;
            frame.elr += 4;
            return;
        }
    }
    // An expected fault (probe_read/probe_write): record it and resume at the fixup.
    if kind == 4 && (ec == 0x25 || ec == 0x21) {
        let fixup = FIXUP.this_cpu();
        let fix = fixup.pc.load(Ordering::Relaxed);
        if fix != 0 {
            fixup.far.store(frame.far, Ordering::Relaxed);
            fixup.esr.store(frame.esr, Ordering::Relaxed);
            fixup.pc.store(0, Ordering::Relaxed);
            frame.elr = fix;
            return;
        }
    }
    report(frame, kind);
    crate::arch::exit(crate::EXIT_EXCEPTION);
}

/// Linux handle_bad_stack: name the overflow and the stack, then the usual report (running on
/// the overflow stack), then exit.
fn handle_bad_stack(frame: &mut Frame) -> ! {
    use core::fmt::Write;
    let mut w = crate::console::EmergencyWriter;
    if IN_BAD_STACK.this_cpu().load(Ordering::Relaxed) {
        let _ = writeln!(w, "\n*** kernel stack overflow while reporting a kernel stack overflow");
        crate::arch::exit(crate::EXIT_EXCEPTION);
    }
    IN_BAD_STACK.this_cpu().store(true, Ordering::Relaxed);
    let sp: u64;
    // SAFETY: reading TPIDR_EL0, where the vector stub saved the faulting SP; no side effects.
    unsafe {
        core::arch::asm!("mrs {}, tpidr_el0", out(reg) sp, options(nomem, nostack, preserves_flags))
    };
    frame.sp = sp;
    let (lo, hi) = (
        KERNEL_STACK_LO.this_cpu().load(Ordering::Relaxed),
        KERNEL_STACK_HI.this_cpu().load(Ordering::Relaxed),
    );
    let ovf = OVERFLOW_STACK.this_cpu_ptr() as u64;
    let _ = writeln!(
        w,
        "\n*** kernel stack overflow on CPU {}: SP {:#x} below the task stack [{:#x}-{:#x}) (guard page {:#x}); overflow stack [{:#x}-{:#x})",
        crate::percpu_defs::smp_processor_id(), sp, lo, hi, lo - 4096, ovf, ovf + OVERFLOW_STACK_SIZE as u64
    );
    report(frame, 4);
    crate::arch::exit(crate::EXIT_EXCEPTION)
}

fn report(frame: &Frame, kind: u64) {
    use core::fmt::Write;
    let ec = frame.esr >> 26;
    let cpu = crate::percpu_defs::smp_processor_id();
    let mut w = crate::console::EmergencyWriter;
    let _ = writeln!(
        w,
        "\n*** EXCEPTION on CPU {cpu}: {} exception: {}",
        KIND_NAMES[(kind & 15) as usize],
        ec_name(ec)
    );
    let _ = writeln!(
        w,
        "    ESR_EL1 {:#018x}  EC {:#04x}  ISS {:#x}",
        frame.esr,
        ec,
        frame.esr & 0x1ff_ffff
    );
    if ec == 0x24 || ec == 0x25 || ec == 0x20 || ec == 0x21 {
        let fsc = frame.esr & 0x3f;
        let wnr = if ec >= 0x24 && frame.esr & (1 << 6) != 0 { "write" } else { "read" };
        let _ = writeln!(
            w,
            "    {} {} at level {}: FAR_EL1 {:#018x}",
            fsc_name(fsc),
            if ec >= 0x24 { wnr } else { "fetch" },
            fsc & 3,
            frame.far
        );
        if frame.far < 0x1000 {
            let _ = writeln!(w, "    (NULL pointer dereference)");
        }
        if let Some(d) = FAULT_DESCRIBER.get() {
            let _ = w.write_str("    ");
            d(frame.far, &mut w);
            let _ = w.write_str("\n");
        }
    } else {
        let _ = writeln!(w, "    FAR_EL1 {:#018x}", frame.far);
    }
    let _ = writeln!(
        w,
        "    ELR_EL1 {:#018x}  SPSR_EL1 {:#010x}  SP {:#018x}",
        frame.elr, frame.spsr, frame.sp
    );
    for i in (0..31).step_by(4) {
        let _ = write!(w, "   ");
        for j in i..(i + 4).min(31) {
            let _ = write!(w, " x{:<2} {:#018x}", j, frame.x[j]);
        }
        let _ = writeln!(w);
    }
}

/// Points VBAR_EL1 at the vectors. Called first thing on every CPU.
pub fn install_vectors() {
    unsafe extern "C" {
        static exception_vectors: u8;
    }
    // SAFETY: exception_vectors is the 2 KiB-aligned vector table in .text (linker.ld); writing
    // VBAR_EL1 is what installs it.
    unsafe {
        core::arch::asm!("msr vbar_el1, {}", "isb", in(reg) &raw const exception_vectors as u64, options(nostack));
    }
}
