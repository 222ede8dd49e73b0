//! The Pi 4 console's clock: how the mini UART's baud divisor is chosen without guessing the
//! VPU core clock, and the VideoCore mailbox message that asks for it.
//!
//! The mini UART (BCM2711 AUX UART1) divides the VPU core clock: baud = clock / (8 * (BAUD + 1)).
//! That clock depends on config.txt (`enable_uart`, `core_freq`, `force_turbo`, 4K HDMI modes),
//! so a fixed guess gives garbage on some boards. In order of preference:
//! 1. the firmware already runs the UART (`enable_uart=1`: AUX_ENABLES bit 0 set, a non-zero
//!    divisor): keep its divisor, it matches the clock the firmware chose;
//! 2. else ask the firmware for the core clock over the mailbox property channel
//!    (GET_CLOCK_RATE, clock id CORE) and compute the divisor;
//! 3. else assume 500 MHz (the Pi 4's core clock with `enable_uart=1`) and say so.

/// The console's baud rate.
pub const BAUD: u32 = 115_200;
/// What the Pi 4 firmware sets the core clock to with `enable_uart=1` (the last resort).
pub const ASSUMED_CORE_HZ: u32 = 500_000_000;

/// The divisor for `baud` at `core_clock_hz` (rounded to nearest), `None` when the clock
/// cannot produce it (the register is 16 bits; a divisor of 0 needs clock = 8 * baud).
pub fn mini_uart_divisor(core_clock_hz: u32, baud: u32) -> Option<u32> {
    if baud == 0 {
        return None;
    }
    let d = (core_clock_hz as u64 + 4 * baud as u64) / (8 * baud as u64);
    (1..=0x1_0000).contains(&d).then(|| (d - 1) as u32)
}

/// The baud rate a divisor gives at `core_clock_hz`.
pub fn mini_uart_baud(core_clock_hz: u32, divisor: u32) -> u32 {
    (core_clock_hz as u64 / (8 * (divisor as u64 + 1))) as u32
}

/// Where the divisor came from (for the boot log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockChoice {
    /// The firmware's own divisor, left as programmed.
    Firmware { divisor: u32 },
    /// Computed from the core clock the mailbox reported.
    Mailbox { core_hz: u32, divisor: u32 },
    /// Computed from [`ASSUMED_CORE_HZ`]: no firmware setup and no mailbox answer.
    Assumed { core_hz: u32, divisor: u32 },
}

impl ClockChoice {
    /// The divisor to program, `None` when the firmware's is kept.
    pub fn program(&self) -> Option<u32> {
        match *self {
            ClockChoice::Firmware { .. } => None,
            ClockChoice::Mailbox { divisor, .. } | ClockChoice::Assumed { divisor, .. } => {
                Some(divisor)
            }
        }
    }
}

/// Chooses the divisor: `aux_enabled` and `fw_divisor` as read from AUX_ENABLES bit 0 and
/// AUX_MU_BAUD before touching them; `ask_mailbox` runs only when the firmware's setup cannot
/// be kept.
pub fn choose(
    aux_enabled: bool,
    fw_divisor: u32,
    ask_mailbox: impl FnOnce() -> Option<u32>,
) -> ClockChoice {
    if aux_enabled && fw_divisor != 0 {
        return ClockChoice::Firmware { divisor: fw_divisor & 0xffff };
    }
    if let Some(core_hz) = ask_mailbox() {
        if let Some(divisor) = mini_uart_divisor(core_hz, BAUD) {
            return ClockChoice::Mailbox { core_hz, divisor };
        }
    }
    let divisor = mini_uart_divisor(ASSUMED_CORE_HZ, BAUD).unwrap_or(0);
    ClockChoice::Assumed { core_hz: ASSUMED_CORE_HZ, divisor }
}

/// Mailbox property channel (8) tag RPI_FIRMWARE_GET_CLOCK_RATE.
pub const TAG_GET_CLOCK_RATE: u32 = 0x0003_0002;
/// Clock id of the VPU core clock (RPI_FIRMWARE_CORE_CLK_ID).
pub const CLOCK_CORE: u32 = 4;
/// The mailbox channel of the ARM-to-VC property interface.
pub const MBOX_CHANNEL_PROPERTY: u32 = 8;

/// A GET_CLOCK_RATE property message for `clock_id` (buffer of 8 words, 16-byte aligned by
/// the caller): size, request code, tag, value buffer size, tag request code, id, rate, end.
pub fn get_clock_rate_msg(clock_id: u32) -> [u32; 8] {
    [32, 0, TAG_GET_CLOCK_RATE, 8, 0, clock_id, 0, 0]
}

/// The rate from the firmware's answer to [`get_clock_rate_msg`]: `None` unless the request
/// succeeded (0x80000000), the tag was answered (bit 31 of its code) for the clock asked, and
/// the rate is non-zero.
pub fn parse_get_clock_rate(msg: &[u32; 8], clock_id: u32) -> Option<u32> {
    let ok = msg[1] == 0x8000_0000
        && msg[2] == TAG_GET_CLOCK_RATE
        && msg[4] & 0x8000_0000 != 0
        && msg[5] == clock_id
        && msg[6] != 0;
    ok.then_some(msg[6])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divisor_for_the_clocks_a_pi_4_runs_at() {
        // 500 MHz (enable_uart=1 on a Pi 4): 542 (the nearest, as Linux's 8250 core rounds
        // its quotient; 115101 baud).
        assert_eq!(mini_uart_divisor(500_000_000, BAUD), Some(542));
        assert_eq!(mini_uart_divisor(250_000_000, BAUD), Some(270));
        assert_eq!(mini_uart_divisor(200_000_000, BAUD), Some(216));
        // Every such choice is within 1% of 115200.
        for hz in [200_000_000, 250_000_000, 400_000_000, 500_000_000, 550_000_000] {
            let d = mini_uart_divisor(hz, BAUD).unwrap();
            let err = (mini_uart_baud(hz, d) as i64 - BAUD as i64).abs();
            assert!(
                err * 100 < BAUD as i64,
                "{hz} Hz: divisor {d} gives {}",
                mini_uart_baud(hz, d)
            );
        }
        assert_eq!(mini_uart_divisor(8 * BAUD - 1, BAUD), Some(0));
        assert_eq!(mini_uart_divisor(1000, BAUD), None);
        assert_eq!(mini_uart_divisor(u32::MAX, 1), None);
    }

    #[test]
    fn firmware_divisor_is_kept_else_mailbox_else_assumed() {
        let mut asked = false;
        let c = choose(true, 270, || {
            asked = true;
            Some(1)
        });
        assert_eq!(c, ClockChoice::Firmware { divisor: 270 });
        assert_eq!((c.program(), asked), (None, false));
        // UART not enabled by the firmware, core clock changed to 250 MHz: the mailbox's rate.
        let c = choose(false, 0, || Some(250_000_000));
        assert_eq!(c, ClockChoice::Mailbox { core_hz: 250_000_000, divisor: 270 });
        assert_eq!(c.program(), Some(270));
        // Enabled but no divisor: not a usable setup.
        assert_eq!(choose(true, 0, || Some(500_000_000)).program(), Some(542));
        // No answer: 500 MHz assumed, said so.
        assert_eq!(
            choose(false, 0, || None),
            ClockChoice::Assumed { core_hz: ASSUMED_CORE_HZ, divisor: 542 }
        );
        // A nonsense rate from the mailbox falls back too.
        assert!(matches!(choose(false, 0, || Some(1000)), ClockChoice::Assumed { .. }));
    }

    #[test]
    fn mailbox_message_round_trip() {
        let mut m = get_clock_rate_msg(CLOCK_CORE);
        assert_eq!(m, [32, 0, 0x30002, 8, 0, 4, 0, 0]);
        assert_eq!(parse_get_clock_rate(&m, CLOCK_CORE), None, "unanswered");
        // The firmware's answer: response code, tag response bit with the value length.
        m[1] = 0x8000_0000;
        m[4] = 0x8000_0008;
        m[6] = 500_000_000;
        assert_eq!(parse_get_clock_rate(&m, CLOCK_CORE), Some(500_000_000));
        m[1] = 0x8000_0001; // parse error
        assert_eq!(parse_get_clock_rate(&m, CLOCK_CORE), None);
        m[1] = 0x8000_0000;
        assert_eq!(parse_get_clock_rate(&m, 3), None, "another clock");
    }
}
