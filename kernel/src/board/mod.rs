//! Board code, apart from the architecture: what one machine needs beyond what the device
//! tree describes generically.
pub mod rpi4;

/// Powers the board off where only board code knows how (the Pi's watchdog); returns where
/// there is no such way (the caller parks the CPU).
pub fn power_off() {
    rpi4::power_off();
}
