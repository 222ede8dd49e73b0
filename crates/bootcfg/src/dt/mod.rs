//! Device-tree parsing: turns the DTB handed over in x0 into a [`BootInfo`].
//!
//! Everything the kernel needs from firmware is read here once, early, and nothing later touches
//! the blob: RAM banks (Linux `early_init_dt_scan_memory()`), reservations (/memreserve/ and
//! /reserved-memory, `early_init_fdt_scan_reserved_mem()`), CPUs and their enable methods
//! (`smp_init_cpus()`), the PSCI conduit (`psci_dt_init()`), the console (`of_stdout`), the DMA
//! limit (`of_dma_get_max_cpu_address()`, [`dma`]) and the Pi's MMIO blocks (PM watchdog, GPIO,
//! AUX), so no board address is a constant in the kernel.
//!
//! The blob comes from firmware or QEMU and may be wrong, so [`parse`] never panics: the header
//! and structure block are validated by [`raw`] before the `fdt` crate walks them, every
//! property is length-checked, and failures come back as a [`DtError`] with a readable message.

mod dma;
mod error;
mod irq;
mod raw;
mod spec;
#[cfg(test)]
mod tests;
mod tree;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use tree::Tree;

pub use error::DtError;
pub use irq::{Gic, DEFAULT_VTIMER_INTID};

/// Everything the kernel takes from the device tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootInfo {
    /// Root `model`, else the first root `compatible`.
    pub model: String,
    pub board: Board,
    /// RAM from every /memory node: non-empty, sorted, adjacent/overlapping ranges merged.
    pub memory: Vec<MemRange>,
    /// Ranges that must never be handed to the page allocator. The DTB itself is added by the
    /// caller with [`BootInfo::reserve_dtb`], since only it knows where the blob lives.
    pub reserved: Vec<Reserved>,
    /// /reserved-memory children with only `size` (e.g. Linux's CMA pool): the OS may place
    /// them anywhere; we list them but reserve nothing.
    pub dynamic_reserved: Vec<(String, u64)>,
    pub cpus: Vec<Cpu>,
    pub psci: Option<PsciConduit>,
    /// The architected timer's `clock-frequency`; normally absent (then read CNTFRQ_EL0).
    pub timer_freq: Option<u32>,
    pub console: Option<Console>,
    /// Exclusive upper bound of the CPU physical addresses every DMA master reaches: Linux's
    /// `of_dma_get_max_cpu_address(NULL) + 1`, the minimum over every `dma-ranges` in the tree
    /// (Pi 4, either DTB: 1 GiB). `None` means no restriction is described (PHYS_ADDR_MAX).
    pub dma_limit: Option<u64>,
    /// CPU physical base of the BCM2835 PM watchdog (used to power off a Pi).
    pub watchdog: Option<u64>,
    /// CPU physical base of the GPIO block ("brcm,bcm2711-gpio" or "brcm,bcm2835-gpio"; Pi 4:
    /// 0xfe200000), for the UART pin functions.
    pub gpio: Option<u64>,
    /// CPU physical base of the AUX block ("brcm,bcm2835-aux": AUX_IRQ, AUX_ENABLES at +4) that
    /// holds the mini UART (Pi 4: 0xfe215000).
    pub aux: Option<u64>,
    /// CPU physical base of the VideoCore mailbox ("brcm,bcm2835-mbox"): the Pi console asks
    /// the firmware for the core clock through it.
    pub mbox: Option<u64>,
    /// The interrupt controller (GICv2 or GICv3); `None` when the tree has none.
    pub gic: Option<Gic>,
    /// The non-secure virtual timer's INTID (the tick), from the timer node's `interrupts`.
    pub vtimer_intid: Option<u32>,
    /// The raw bytes of /chosen/bootargs without its terminating NUL (empty if absent). Kept
    /// as bytes, never dropped or cut here: [`crate::params::cmdline`] checks them (UTF-8, no
    /// control characters) and the boot refuses a bad command line with the offending offset.
    pub bootargs: Vec<u8>,
    /// /chosen/stdout-path as written, options included (e.g. "serial1:115200n8").
    pub stdout_path: String,
    /// The header's totalsize: the DTB occupies `[dtb_pa, dtb_pa + dtb_size)`.
    pub dtb_size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Board {
    /// QEMU `-M virt` (root compatible "linux,dummy-virt").
    QemuVirt,
    /// Raspberry Pi 4 / QEMU `raspi4b` ("raspberrypi,4-model-b" or "brcm,bcm2711").
    RaspberryPi4,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemRange {
    pub base: u64,
    pub size: u64,
}

impl MemRange {
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    pub base: u64,
    pub size: u64,
    pub kind: ReservedKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReservedKind {
    /// An entry of the header's /memreserve/ map (Pi: the armstub/spin-table page).
    MemReserve,
    /// A /reserved-memory child with a static `reg`; holds the node name.
    ReservedMemory(String),
    /// The device-tree blob itself.
    Dtb,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpu {
    /// The `reg` value: the CPU's MPIDR affinity bits.
    pub mpidr: u64,
    pub enable: EnableMethod,
}

/// How a secondary CPU is started (Linux `cpu_ops`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnableMethod {
    /// PSCI CPU_ON through [`BootInfo::psci`].
    Psci,
    /// Write the entry point to `release_addr`, `dsb sy`, `sev`.
    SpinTable { release_addr: u64 },
    /// No enable-method: the CPU cannot be started.
    None,
    /// Anything else, e.g. "brcm,bcm2836-smp", or "spin-table" without `cpu-release-addr`.
    Other(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PsciConduit {
    Hvc,
    Smc,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Console {
    pub kind: ConsoleKind,
    /// CPU physical address, after `ranges` translation.
    pub base: u64,
    pub size: u64,
    /// Reference clock, when `clocks` points at a "fixed-clock".
    pub clock_hz: Option<u32>,
    /// Full node path, e.g. "/soc/serial@7e215040".
    pub path: String,
    /// `None` when /chosen/stdout-path chose it; otherwise why that failed and which
    /// fallback rule picked this node (for the boot banner).
    pub fallback_reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleKind {
    /// ARM PrimeCell UART ("arm,pl011"): QEMU virt, Pi 4 UART0.
    Pl011,
    /// BCM2835 AUX mini UART ("brcm,bcm2835-aux-uart"): Pi 4 UART1, its default console.
    MiniUart,
}

impl ConsoleKind {
    const ALL: [(&'static str, ConsoleKind); 2] =
        [("arm,pl011", ConsoleKind::Pl011), ("brcm,bcm2835-aux-uart", ConsoleKind::MiniUart)];
}

/// Parses a DTB for boot. Fails if it is malformed, describes no RAM, or has no usable UART.
pub fn parse(dtb: &[u8]) -> Result<BootInfo, DtError> {
    parse_inner(dtb, true)
}

/// Like [`parse`] but accepts an empty `memory` and a missing console (only structural and
/// property errors fail). For tools and tests, e.g. the upstream Pi 4 DTB whose /memory is a
/// placeholder that firmware fills in.
pub fn parse_lenient(dtb: &[u8]) -> Result<BootInfo, DtError> {
    parse_inner(dtb, false)
}

impl BootInfo {
    /// Records the blob's own location `[pa, pa + dtb_size)` as reserved; neither QEMU nor the
    /// Pi firmware lists it in /memreserve/. Calling it again replaces the earlier entry.
    pub fn reserve_dtb(&mut self, pa: u64) {
        self.reserved.retain(|r| r.kind != ReservedKind::Dtb);
        self.reserved.push(Reserved { base: pa, size: self.dtb_size, kind: ReservedKind::Dtb });
    }
}

fn parse_inner(dtb: &[u8], strict: bool) -> Result<BootInfo, DtError> {
    let h = raw::header(dtb)?;
    raw::check_structure(dtb, &h)?;
    let memreserve = raw::mem_reserve(dtb, &h)?;
    let t = Tree::build(dtb)?;

    let compat: Vec<&str> = t.strings(0, "compatible").collect();
    let board = if compat.contains(&"linux,dummy-virt") {
        Board::QemuVirt
    } else if compat.iter().any(|c| *c == "raspberrypi,4-model-b" || *c == "brcm,bcm2711") {
        Board::RaspberryPi4
    } else {
        Board::Unknown
    };
    let model = t.str(0, "model").or(compat.first().copied()).unwrap_or("unknown").to_string();

    let chosen = t.child(0, "chosen");
    let chosen_str = |p| chosen.and_then(|c| t.str(c, p)).unwrap_or("");
    let stdout_path = match chosen_str("stdout-path") {
        "" => chosen_str("linux,stdout-path"),
        s => s,
    };

    let memory = memory(&t)?;
    if strict && memory.is_empty() {
        return Err(DtError::NoMemory);
    }
    let mut reserved: Vec<Reserved> = memreserve
        .into_iter()
        .map(|(base, size)| Reserved { base, size, kind: ReservedKind::MemReserve })
        .collect();
    let mut dynamic_reserved = Vec::new();
    reserved_memory(&t, &mut reserved, &mut dynamic_reserved)?;

    let console = match console(&t, stdout_path) {
        Ok(c) => Some(c),
        Err(reason) if strict => {
            return Err(DtError::NoConsole { stdout_path: stdout_path.into(), reason });
        }
        Err(_) => None,
    };

    let first_compatible =
        |c: &str| (0..t.nodes.len()).find(|&i| t.is_compatible(i, c) && t.available(i));
    // The first `reg` of the first available node matching the earliest listed compatible.
    let mmio_base = |compats: &[&str]| {
        compats.iter().find_map(|c| first_compatible(c)).and_then(|i| t.mmio(i).ok()).map(|m| m.0)
    };
    let psci = ["arm,psci-1.0", "arm,psci-0.2", "arm,psci"]
        .iter()
        .find_map(|c| first_compatible(c))
        .or_else(|| t.child(0, "psci").filter(|&i| t.available(i)))
        .and_then(|i| match t.str(i, "method") {
            Some("hvc") => Some(PsciConduit::Hvc),
            Some("smc") => Some(PsciConduit::Smc),
            _ => None,
        });

    Ok(BootInfo {
        model,
        board,
        memory,
        reserved,
        dynamic_reserved,
        cpus: cpus(&t)?,
        psci,
        timer_freq: first_compatible("arm,armv8-timer").and_then(|i| t.u32(i, "clock-frequency")),
        console,
        dma_limit: dma::max_cpu_address(&t)?.and_then(|m| m.checked_add(1)),
        // Optional hardware: a block we cannot locate just means the kernel goes without it
        // (no power-off by watchdog, no pin muxing).
        watchdog: mmio_base(&["brcm,bcm2835-pm-wdt"]),
        gpio: mmio_base(&["brcm,bcm2711-gpio", "brcm,bcm2835-gpio"]),
        aux: mmio_base(&["brcm,bcm2835-aux"]),
        mbox: mmio_base(&["brcm,bcm2835-mbox"]),
        gic: irq::gic(&t)?,
        vtimer_intid: irq::vtimer_intid(&t)?,
        bootargs: chosen
            .and_then(|c| t.prop(c, "bootargs"))
            .map_or(Vec::new(), |v| v.strip_suffix(&[0]).unwrap_or(v).to_vec()),
        stdout_path: stdout_path.into(),
        dtb_size: h.totalsize as u64,
    })
}

/// Root children with device_type "memory" (or named memory@...), as Linux's
/// `early_init_dt_scan_memory()`; disabled nodes and zero sizes are skipped.
fn memory(t: &Tree) -> Result<Vec<MemRange>, DtError> {
    let mut banks = Vec::new();
    for i in t.children(0) {
        let is_mem = t.str(i, "device_type") == Some("memory")
            || t.nodes[i].name.split('@').next() == Some("memory");
        if !is_mem || !t.available(i) {
            continue;
        }
        for (base, size) in t.reg(i)? {
            if size == 0 {
                continue;
            }
            if base.checked_add(size).is_none() {
                return Err(DtError::BadProperty {
                    node: t.path(i),
                    prop: "reg",
                    what: format!("{base:#x}+{size:#x} overflows"),
                });
            }
            banks.push(MemRange { base, size });
        }
    }
    banks.sort();
    let mut merged: Vec<MemRange> = Vec::with_capacity(banks.len());
    for b in banks {
        match merged.last_mut() {
            Some(last) if b.base <= last.end() => last.size = last.size.max(b.end() - last.base),
            _ => merged.push(b),
        }
    }
    Ok(merged)
}

/// /reserved-memory children (Linux `fdt_scan_reserved_mem()`): static `reg` ranges are
/// reserved; `size`-only (dynamically placed) ones are only listed.
fn reserved_memory(
    t: &Tree,
    out: &mut Vec<Reserved>,
    dynamic: &mut Vec<(String, u64)>,
) -> Result<(), DtError> {
    let Some(rm) = t.child(0, "reserved-memory") else { return Ok(()) };
    for i in t.children(rm).filter(|&i| t.available(i)) {
        let name = &t.nodes[i].name;
        if t.prop(i, "reg").is_some() {
            for (base, size) in t.reg(i)?.into_iter().filter(|&(_, s)| s != 0) {
                if base.checked_add(size).is_none() {
                    return Err(DtError::BadProperty {
                        node: t.path(i),
                        prop: "reg",
                        what: format!("{base:#x}+{size:#x} overflows"),
                    });
                }
                out.push(Reserved { base, size, kind: ReservedKind::ReservedMemory(name.clone()) });
            }
        } else if let Some(v) = t.prop(i, "size") {
            let sc = t.cells(rm).1;
            if v.len() != sc as usize * 4 || sc > 2 {
                return Err(DtError::BadProperty {
                    node: t.path(i),
                    prop: "size",
                    what: format!("{} bytes, expected #size-cells {sc} x 4", v.len()),
                });
            }
            let size =
                v.chunks_exact(4).fold(0u64, |a, c| a << 32 | raw::be32(c, 0).unwrap_or(0) as u64);
            dynamic.push((name.clone(), size));
        }
    }
    Ok(())
}

/// /cpus children with device_type "cpu" (not cpu-map or caches). "disabled" is kept: for CPUs
/// it means "parked, start me with the enable-method"; only "fail" CPUs are dropped.
fn cpus(t: &Tree) -> Result<Vec<Cpu>, DtError> {
    let Some(cpus) = t.child(0, "cpus") else { return Ok(Vec::new()) };
    let default_method = t.str(cpus, "enable-method");
    let mut out = Vec::new();
    for i in t.children(cpus) {
        if t.str(i, "device_type") != Some("cpu")
            || t.str(i, "status").is_some_and(|s| s.starts_with("fail"))
        {
            continue;
        }
        // Multi-threaded cores list several ids; the first is the thread Linux boots (hwid 0).
        let (mpidr, _) = *t.reg(i)?.first().ok_or_else(|| DtError::BadProperty {
            node: t.path(i),
            prop: "reg",
            what: "missing".into(),
        })?;
        let enable = match t.str(i, "enable-method").or(default_method) {
            None => EnableMethod::None,
            Some("psci") => EnableMethod::Psci,
            Some("spin-table") => match t.prop(i, "cpu-release-addr") {
                Some(v) if v.len() == 8 || v.len() == 4 => EnableMethod::SpinTable {
                    release_addr: v
                        .chunks_exact(4)
                        .fold(0, |a, c| a << 32 | raw::be32(c, 0).unwrap_or(0) as u64),
                },
                _ => EnableMethod::Other("spin-table without a valid cpu-release-addr".into()),
            },
            Some(other) => EnableMethod::Other(other.into()),
        };
        out.push(Cpu { mpidr, enable });
    }
    Ok(out)
}

/// Picks the console like Linux's `of_stdout`: /chosen/stdout-path (options after ':' dropped,
/// alias or full path), else the serial0 alias, else the first enabled supported UART.
fn console(t: &Tree, stdout_path: &str) -> Result<Console, String> {
    let spec = stdout_path.split(':').next().unwrap_or("");
    let reason = if spec.is_empty() {
        "missing".to_string()
    } else {
        match t.resolve(spec) {
            None => "names no node".to_string(),
            Some(i) => match uart(t, i) {
                Ok(c) => return Ok(c),
                Err(why) => format!("{}: {why}", t.path(i)),
            },
        }
    };
    let fallback = |rule: &str, mut c: Console| {
        c.fallback_reason = Some(format!("stdout-path \"{stdout_path}\" {reason}; using {rule}"));
        c
    };
    if let Some(c) = t.resolve("serial0").and_then(|i| uart(t, i).ok()) {
        return Ok(fallback("alias serial0", c));
    }
    if let Some(c) = (0..t.nodes.len()).find_map(|i| uart(t, i).ok()) {
        return Ok(fallback("the first enabled supported UART", c));
    }
    Err(reason)
}

/// Node `i` as a console, or why it cannot be one.
fn uart(t: &Tree, i: usize) -> Result<Console, String> {
    let Some(&(_, kind)) = ConsoleKind::ALL.iter().find(|(c, _)| t.is_compatible(i, c)) else {
        return Err(format!(
            "compatible \"{}\" is not a supported UART",
            t.str(i, "compatible").unwrap_or("")
        ));
    };
    if !t.available(i) {
        return Err(format!("status is \"{}\"", t.str(i, "status").unwrap_or("")));
    }
    let (base, size) = t.mmio(i).map_err(|e| e.to_string())?;
    if base.checked_add(size).is_none() {
        // The boot maps [base, base + size): a wrapping range is no usable console.
        return Err(format!("reg {base:#x}+{size:#x} overflows"));
    }
    // Only the first clock matters (PL011 "uartclk"); a fixed-clock gives its rate directly.
    let clock_hz = t
        .u32(i, "clocks")
        .and_then(|ph| t.by_phandle(ph))
        .filter(|&c| t.is_compatible(c, "fixed-clock"))
        .and_then(|c| t.u32(c, "clock-frequency"));
    Ok(Console { kind, base, size, clock_hz, path: t.path(i), fallback_reason: None })
}
