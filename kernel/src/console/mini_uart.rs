//! BCM2711 auxiliary "mini UART" (UART1): the Pi 4's primary console on GPIO14/15.
use core::ptr::{read_volatile, write_volatile};

// Register offsets from the UART's own base (the DT's reg, 0xfe215040 on a Pi 4).
const IO: u64 = 0x00;
const IER: u64 = 0x04;
const IIR: u64 = 0x08;
const LCR: u64 = 0x0c;
const MCR: u64 = 0x10;
const LSR: u64 = 0x14;
const CNTL: u64 = 0x20;
const BAUD: u64 = 0x28;
const LSR_TX_EMPTY: u32 = 1 << 5;

pub struct MiniUart {
    base: u64,
}

impl MiniUart {
    /// A handle on the mini UART whose registers are mapped at `base`.
    ///
    /// # Safety
    /// `base` must map the mini UART's registers as device memory for as long as the handle (and
    /// any copy of `base` made from it) is used.
    pub unsafe fn new(base: u64) -> Self {
        MiniUart { base }
    }

    fn reg(&self, off: u64) -> *mut u32 {
        (self.base + off) as *mut u32
    }

    /// What the firmware left: (AUX_ENABLES bit 0 set, AUX_MU_BAUD), read before touching them.
    ///
    /// # Safety
    /// `base` must map the mini UART; `aux_enables` its AUX_ENABLES register.
    pub unsafe fn firmware_setup(&self, aux_enables: *mut u32) -> (bool, u32) {
        // SAFETY: the caller's contract: both are registers of the mapped AUX block.
        unsafe { (read_volatile(aux_enables) & 1 != 0, read_volatile(self.reg(BAUD)) & 0xffff) }
    }

    /// Programs 8N1 at the baud rate `divisor` gives (baud = core clock / (8 * (divisor + 1)),
    /// see `bootcfg::uart`); `None` keeps the firmware's setup as it is.
    ///
    /// # Safety
    /// `base` must map the mini UART; `aux_enables` the AUX_ENABLES register (base - 0x40 + 4).
    pub unsafe fn init(&self, aux_enables: *mut u32, divisor: Option<u32>) {
        let Some(divisor) = divisor else { return };
        // SAFETY: the caller's contract (this fn's # Safety): base maps the mini UART and
        // aux_enables its AUX_ENABLES register.
        unsafe {
            write_volatile(aux_enables, read_volatile(aux_enables) | 1);
            write_volatile(self.reg(CNTL), 0);
            write_volatile(self.reg(IER), 0);
            write_volatile(self.reg(LCR), 3); // 8-bit mode
            write_volatile(self.reg(MCR), 0);
            write_volatile(self.reg(IIR), 0xc6); // clear FIFOs
            write_volatile(self.reg(BAUD), divisor);
            write_volatile(self.reg(CNTL), 3); // TX and RX on
        }
    }

    fn putc(&self, c: u8) {
        // SAFETY: self.base maps the mini UART (MiniUart::new's contract, checked by init's
        // caller); IO/LSR are its registers.
        unsafe {
            while read_volatile(self.reg(LSR)) & LSR_TX_EMPTY == 0 {}
            write_volatile(self.reg(IO), c as u32);
        }
    }

    /// Waits until the transmitter is idle (LSR bit 6: FIFO empty and the last bit shifted
    /// out), not just until the FIFO has room.
    pub fn drain(&self) {
        const LSR_TX_IDLE: u32 = 1 << 6;
        // SAFETY: as putc: LSR of the mini UART mapped at base.
        unsafe {
            while read_volatile(self.reg(LSR)) & LSR_TX_IDLE == 0 {
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
