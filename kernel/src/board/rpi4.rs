//! Raspberry Pi 4 (BCM2711) specifics the console and power-off need: GPIO pin functions for
//! the UART pins, the PM watchdog and the VideoCore mailbox's property channel (Linux:
//! drivers/pinctrl/bcm/pinctrl-bcm2835.c, drivers/watchdog/bcm2835_wdt.c,
//! drivers/mailbox/bcm2835-mailbox.c + drivers/firmware/raspberrypi.c).
use core::sync::atomic::{AtomicU64, Ordering};

static WATCHDOG: AtomicU64 = AtomicU64::new(0);

/// Registers the PM/watchdog block (its virtual address) for [`power_off`].
pub fn set_watchdog(va: u64) {
    WATCHDOG.store(va, Ordering::Relaxed);
}

/// Halts the board through the PM watchdog (as Linux's `bcm2835_power_off`), if one was
/// registered; returns otherwise.
pub fn power_off() {
    let wdt = WATCHDOG.load(Ordering::Relaxed);
    if wdt != 0 {
        const PM_PASSWORD: u32 = 0x5a00_0000;
        // SAFETY: `wdt` maps the PM block (set_watchdog's caller mapped it as device memory);
        // PM_RSTS: boot from "partition 63" = halt; PM_RSTC: full reset after a short timeout.
        unsafe {
            core::ptr::write_volatile((wdt + 0x20) as *mut u32, PM_PASSWORD | 0x555);
            core::ptr::write_volatile((wdt + 0x24) as *mut u32, PM_PASSWORD | 10);
            core::ptr::write_volatile((wdt + 0x1c) as *mut u32, PM_PASSWORD | 0x20);
        }
    }
}

/// GPFSEL1 function for pins 14 and 15 and no pull (BCM2711 GPIO_PUP_PDN_CNTRL_REG0).
///
/// # Safety
/// `gpio` must map the GPIO block (0xfe200000 on a Pi 4).
pub unsafe fn set_gpio14_15(gpio: u64, func: u32) {
    // SAFETY: the caller guarantees `gpio` maps the GPIO block; these are its registers.
    unsafe {
        let gpfsel1 = (gpio + 0x04) as *mut u32;
        let mut v = core::ptr::read_volatile(gpfsel1);
        v &= !((7 << 12) | (7 << 15));
        v |= (func << 12) | (func << 15);
        core::ptr::write_volatile(gpfsel1, v);
        let pup = (gpio + 0xe4) as *mut u32;
        let mut p = core::ptr::read_volatile(pup);
        p &= !((3 << 28) | (3 << 30));
        core::ptr::write_volatile(pup, p);
    }
}

/// The property message buffer: 16-byte aligned (the low 4 bits of a mailbox word carry the
/// channel), in the image, which the firmware loads below 1 GiB where the VideoCore sees RAM.
#[repr(C, align(64))]
struct MboxBuf([u32; 8]);
static MBOX_BUF: spin::Mutex<MboxBuf> = spin::Mutex::new(MboxBuf([0; 8]));

/// Asks the firmware for a clock's rate (GET_CLOCK_RATE) through the mailbox mapped at `mbox`:
/// write the message's bus address with channel 8, wait for the reply. `None` on any failure
/// or after about 100 ms of counter time (a mailbox that never answers).
///
/// # Safety
/// `mbox` must map the BCM2835 mailbox registers (the DT's "brcm,bcm2835-mbox") as device
/// memory.
pub unsafe fn mailbox_get_clock_rate(mbox: u64, clock_id: u32) -> Option<u32> {
    use bootcfg::uart::{get_clock_rate_msg, parse_get_clock_rate, MBOX_CHANNEL_PROPERTY};
    const READ: u64 = 0x00;
    const STATUS: u64 = 0x18;
    const WRITE: u64 = 0x20;
    const FULL: u32 = 1 << 31;
    const EMPTY: u32 = 1 << 30;
    let mut buf = MBOX_BUF.lock();
    buf.0 = get_clock_rate_msg(clock_id);
    let va = buf.0.as_ptr() as u64;
    let pa = crate::arch::mmu::kimage_va_to_pa(va);
    // The VideoCore's view of ARM RAM is its "uncached" alias at 0xc0000000 (the Pi 4 DT's
    // /soc dma-ranges), and it reads memory, not this CPU's cache: clean before, invalidate
    // after (Linux gets both from dma_alloc_coherent).
    if pa >= 0x4000_0000 {
        return None;
    }
    let bus = (pa as u32) | 0xc000_0000;
    crate::arch::dcache_clean_inval_poc(va, 32);
    let timeout = crate::arch::timer_hz() / 10;
    let start = crate::arch::cycles();
    let rd = |off| {
        // SAFETY: the caller's contract: mbox maps the mailbox registers.
        unsafe { core::ptr::read_volatile((mbox + off) as *const u32) }
    };
    while rd(STATUS) & FULL != 0 {
        if crate::arch::cycles() - start > timeout {
            return None;
        }
    }
    // SAFETY: as rd: the mailbox's write register.
    unsafe { core::ptr::write_volatile((mbox + WRITE) as *mut u32, bus | MBOX_CHANNEL_PROPERTY) };
    loop {
        while rd(STATUS) & EMPTY != 0 {
            if crate::arch::cycles() - start > timeout {
                return None;
            }
        }
        if rd(READ) == bus | MBOX_CHANNEL_PROPERTY {
            break;
        }
    }
    crate::arch::dcache_clean_inval_poc(va, 32);
    // SAFETY: the firmware wrote its answer into the buffer (reply received above); read it
    // back from memory, not from a value the compiler kept.
    let answer: [u32; 8] = unsafe { core::ptr::read_volatile(&buf.0) };
    parse_get_clock_rate(&answer, clock_id)
}
