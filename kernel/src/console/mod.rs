//! The console: the UART that /chosen/stdout-path names (PL011 or the Pi's mini UART).
//!
//! What is printed before the UART is known goes into an early log buffer (Linux: the printk
//! ring buffer, replayed when a console registers): `set_uart` replays it. If the kernel ends
//! before any UART exists (a bad device tree), the buffer goes out through semihosting where
//! QEMU offers it, so the error is still seen and the exit status still set. `on_exit` prints
//! the final line (Linux's "reboot: Power down") and drains the UART before power is cut.
mod mini_uart;
mod pl011;

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

pub use mini_uart::MiniUart;
pub use pl011::Pl011;

/// 0 = semihosting only, 1 = PL011, 2 = mini UART.
static KIND: AtomicU8 = AtomicU8::new(0);
/// Virtual address of the UART registers.
static BASE: AtomicU64 = AtomicU64::new(0);
static LOCK: spin::Mutex<()> = spin::Mutex::new(());
/// Linux `printk.time`: every line starts with `[seconds.micros] ` (on by default).
static PRINTK_TIME: AtomicBool = AtomicBool::new(true);
/// The last character written was a newline (or nothing was written yet).
static AT_LINE_START: AtomicBool = AtomicBool::new(true);

/// `printk.time=0` turns the timestamps off.
pub fn set_printk_time(on: bool) {
    PRINTK_TIME.store(on, Ordering::Relaxed);
}

/// Selects the UART mapped at `va` as the console.
/// Makes the UART at `va` the console.
///
/// # Safety
/// `va` must map the device of `kind` as device memory for the rest of the run.
pub unsafe fn set_uart(kind: bootcfg::dt::ConsoleKind, va: u64) {
    let _irq = crate::arch::IrqGuard::new();
    let _g = LOCK.lock();
    BASE.store(va, Ordering::SeqCst);
    KIND.store(
        match kind {
            bootcfg::dt::ConsoleKind::Pl011 => 1,
            bootcfg::dt::ConsoleKind::MiniUart => 2,
        },
        Ordering::SeqCst,
    );
    replay_early();
}

/// Size of the early log buffer (the boot before the console prints a few hundred bytes).
const EARLY_LOG_SIZE: usize = 16 * 1024;

struct EarlyLog {
    buf: [u8; EARLY_LOG_SIZE],
    len: usize,
    /// Bytes that did not fit (Linux: "printk messages dropped").
    dropped: usize,
}

static EARLY: spin::Mutex<EarlyLog> =
    spin::Mutex::new(EarlyLog { buf: [0; EARLY_LOG_SIZE], len: 0, dropped: 0 });

fn early_push(s: &str) {
    // try_lock: the exception path may print while the early log is being replayed.
    let Some(mut e) = EARLY.try_lock() else { return };
    let room = EARLY_LOG_SIZE - e.len;
    let n = s.len().min(room);
    let start = e.len;
    e.buf[start..start + n].copy_from_slice(&s.as_bytes()[..n]);
    e.len += n;
    e.dropped += s.len() - n;
}

/// Writes the early log to the UART just registered (console lock held) and empties it.
fn replay_early() {
    let mut e = EARLY.lock();
    let len = e.len;
    if let Ok(text) = core::str::from_utf8(&e.buf[..len]) {
        write_uart(text);
    }
    if e.dropped != 0 {
        let mut b = [0u8; 64];
        let mut w = Buf { buf: &mut b, len: 0 };
        let _ = writeln!(w, "printk: {} early bytes dropped", e.dropped);
        let n = w.len;
        write_uart(core::str::from_utf8(&b[..n]).unwrap_or(""));
    }
    e.len = 0;
    e.dropped = 0;
}

/// The end of the run (arch::exit's hook): the final line, then everything out of the UART
/// (or, with no UART yet, the early log through semihosting, if QEMU offers it).
pub fn on_exit(code: u32) {
    let mut w = EmergencyWriter;
    let _ = writeln!(
        w,
        "reboot: Power down (exit status {code}{})",
        match code {
            crate::EXIT_OK => ": ok",
            crate::EXIT_TEST_FAILED => ": a test failed",
            crate::EXIT_BAD_INPUT => ": bad input",
            crate::EXIT_EXCEPTION => ": exception",
            crate::EXIT_PANIC => ": panic",
            _ => "",
        }
    );
    let base = BASE.load(Ordering::Relaxed);
    match KIND.load(Ordering::Relaxed) {
        // SAFETY: KIND is set only by set_uart, whose caller guarantees BASE maps that UART.
        1 => unsafe { Pl011::new(base) }.drain(),
        // SAFETY: as above.
        2 => unsafe { MiniUart::new(base) }.drain(),
        _ => {
            if let Some(e) = EARLY.try_lock() {
                if let Ok(text) = core::str::from_utf8(&e.buf[..e.len]) {
                    crate::arch::semihosting::write_str(text);
                }
            }
        }
    }
}

pub fn has_uart() -> bool {
    KIND.load(Ordering::Relaxed) != 0
}

fn write_uart(s: &str) {
    let base = BASE.load(Ordering::Relaxed);
    match KIND.load(Ordering::Relaxed) {
        // SAFETY: KIND is set only by set_uart, whose caller guarantees BASE maps that UART
        // for the rest of the run.
        1 => unsafe { Pl011::new(base) }.write_str(s),
        // SAFETY: as above.
        2 => unsafe { MiniUart::new(base) }.write_str(s),
        _ => early_push(s),
    }
}

/// Linux's printk timestamp, `[%5lu.%06lu] `: the generic counter since reset, so under
/// `-icount shift=0` (1 ns per instruction) the microseconds count thousands of guest
/// instructions since the machine started.
fn write_timestamp() {
    let us = crate::arch::cycles_to_us(crate::arch::cycles());
    let mut buf = [0u8; 24];
    let mut w = Buf { buf: &mut buf, len: 0 };
    let _ = write!(w, "[{:5}.{:06}] ", us / 1_000_000, us % 1_000_000);
    let len = w.len;
    write_uart(core::str::from_utf8(&buf[..len]).unwrap_or(""));
}

struct Buf<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Write for Buf<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let b = s.as_bytes();
        let n = b.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
        Ok(())
    }
}

/// Writes `s`, starting every line with a timestamp when `printk.time` is on.
fn write_raw(s: &str) {
    if !PRINTK_TIME.load(Ordering::Relaxed) {
        write_uart(s);
        return;
    }
    let mut rest = s;
    while !rest.is_empty() {
        if AT_LINE_START.load(Ordering::Relaxed) {
            write_timestamp();
        }
        let (line, more) = match rest.find('\n') {
            Some(i) => rest.split_at(i + 1),
            None => (rest, ""),
        };
        write_uart(line);
        AT_LINE_START.store(line.ends_with('\n'), Ordering::Relaxed);
        rest = more;
    }
}

/// Console writer taking the console lock per call.
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let _irq = crate::arch::IrqGuard::new();
        let _g = LOCK.lock();
        write_raw(s);
        Ok(())
    }
}

/// Writer for the exception and panic paths: does not wait for a lock that the faulting code
/// may hold.
pub struct EmergencyWriter;

impl Write for EmergencyWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_raw(s);
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    let _irq = crate::arch::IrqGuard::new();
    let _g = LOCK.lock();
    // Under the lock, the lock-free writer is the plain one.
    let _ = EmergencyWriter.write_fmt(args);
}

/// Prints to the console (one line written under one lock acquisition).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
