//! Raspberry Pi 4 (BCM2711) specifics the console and power-off need: GPIO pin functions for
//! the UART pins and the PM watchdog (Linux: drivers/pinctrl/bcm/pinctrl-bcm2835.c,
//! drivers/watchdog/bcm2835_wdt.c).
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
