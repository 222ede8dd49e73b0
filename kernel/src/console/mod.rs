//! The console: the UART that /chosen/stdout-path names (PL011 or the Pi's mini UART), or
//! semihosting output before one is known (and where none is usable).
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
    BASE.store(va, Ordering::SeqCst);
    KIND.store(
        match kind {
            bootcfg::dt::ConsoleKind::Pl011 => 1,
            bootcfg::dt::ConsoleKind::MiniUart => 2,
        },
        Ordering::SeqCst,
    );
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
        _ => crate::arch::semihosting::write_str(s),
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
    struct Raw;
    impl Write for Raw {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            write_raw(s);
            Ok(())
        }
    }
    let _ = Raw.write_fmt(args);
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
