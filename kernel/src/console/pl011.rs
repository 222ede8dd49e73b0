//! ARM PL011 UART (QEMU virt; the Pi 4's UART0 / QEMU raspi4b's first serial port).
use core::ptr::{read_volatile, write_volatile};

const DR: u64 = 0x00;
const FR: u64 = 0x18;
const IBRD: u64 = 0x24;
const FBRD: u64 = 0x28;
const LCRH: u64 = 0x2c;
const CR: u64 = 0x30;
const FR_TXFF: u32 = 1 << 5;
const FR_BUSY: u32 = 1 << 3;

pub struct Pl011 {
    base: u64,
}

impl Pl011 {
    /// A handle on the PL011 whose registers are mapped at `base`.
    ///
    /// # Safety
    /// `base` must map the PL011's registers as device memory for as long as the handle (and
    /// any copy of `base` made from it) is used.
    pub unsafe fn new(base: u64) -> Self {
        Pl011 { base }
    }

    fn reg(&self, off: u64) -> *mut u32 {
        (self.base + off) as *mut u32
    }

    /// Programs 115200 8N1 from the UART clock (real hardware; QEMU's PL011 needs nothing).
    ///
    /// # Safety
    /// `base` must map the PL011's registers as device memory.
    pub unsafe fn init(&self, clock_hz: u32) {
        // SAFETY: the caller's contract: base maps the PL011 as device memory.
        unsafe {
            while read_volatile(self.reg(FR)) & FR_BUSY != 0 {}
            write_volatile(self.reg(CR), 0);
            // divisor = clock / (16 * baud) as 16.6 fixed point: 48 MHz -> IBRD 26, FBRD 3.
            let div64 = ((clock_hz as u64) * 4 + 115200 / 2) / 115200;
            write_volatile(self.reg(IBRD), (div64 >> 6) as u32);
            write_volatile(self.reg(FBRD), (div64 & 63) as u32);
            write_volatile(self.reg(LCRH), (3 << 5) | (1 << 4)); // 8 bits, FIFO on
            write_volatile(self.reg(CR), (1 << 0) | (1 << 8) | (1 << 9)); // UARTEN, TXE, RXE
        }
    }

    fn putc(&self, c: u8) {
        // SAFETY: self.base maps the PL011 (the contract of the unsafe Pl011::new); FR and DR are its registers.
        unsafe {
            while read_volatile(self.reg(FR)) & FR_TXFF != 0 {}
            write_volatile(self.reg(DR), c as u32);
        }
    }

    /// Waits until the last character has left the shift register (FIFO empty and not busy),
    /// not just until there is FIFO space: what must hold before power is cut.
    pub fn drain(&self) {
        const FR_TXFE: u32 = 1 << 7;
        // SAFETY: as putc: FR of the PL011 mapped at base.
        unsafe {
            while read_volatile(self.reg(FR)) & (FR_BUSY | FR_TXFE) != FR_TXFE {
                core::hint::spin_loop();
            }
        }
    }

    pub fn write_str(&self, s: &str) {
        for b in s.bytes() {
            if b == b'\n' {
                self.putc(b'\r');
            }
            self.putc(b);
        }
    }
}
