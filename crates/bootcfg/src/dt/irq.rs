//! The interrupt controller and the architected timer's interrupt, as Linux's irqchip drivers
//! (`gic_of_init`, `gicv3_of_init`) and `arch_timer_of_init` read them.
use alloc::format;
use alloc::vec::Vec;

use super::tree::Tree;
use super::DtError;

/// The GIC the device tree describes (CPU physical addresses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gic {
    /// GICv2 ("arm,cortex-a15-gic", "arm,gic-400": QEMU virt's default, the Pi 4's GIC-400):
    /// distributor and CPU interface.
    V2 { gicd: u64, gicc: u64 },
    /// GICv3 ("arm,gic-v3": QEMU virt with `gic-version=3`/`max`): distributor and the
    /// redistributor regions (`#redistributor-regions` entries of `reg` after the distributor),
    /// each (base, size); `redistributor-stride` when the DT gives one (else the frames are
    /// walked by GICR_TYPER.Last, as Linux's `gic_iterate_rdists`).
    V3 { gicd: u64, redist_regions: Vec<(u64, u64)>, redist_stride: Option<u64> },
}

/// GIC interrupt specifier types (dt-bindings/interrupt-controller/arm-gic.h).
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;

/// The non-secure virtual timer's INTID when the DT does not say: PPI 11 (Linux
/// ARCH_TIMER_VIRT_PPI, the third `interrupts` entry of "arm,armv8-timer").
pub const DEFAULT_VTIMER_INTID: u32 = 27;

fn first_available(t: &Tree, compat: &[&str]) -> Option<usize> {
    (0..t.nodes.len()).find(|&i| compat.iter().any(|c| t.is_compatible(i, c)) && t.available(i))
}

/// The first available GIC node, decoded. `Ok(None)` when there is none (no interrupts: the
/// kernel then polls, as before this existed).
pub fn gic(t: &Tree) -> Result<Option<Gic>, DtError> {
    if let Some(i) = first_available(t, &["arm,gic-v3"]) {
        let regs = t.reg(i)?;
        let nr = t.u32(i, "#redistributor-regions").unwrap_or(1) as usize;
        if nr == 0 || regs.len() < 1 + nr {
            return Err(DtError::BadProperty {
                node: t.path(i),
                prop: "reg",
                what: format!(
                    "{} entries, need the distributor and {nr} redistributor region(s)",
                    regs.len()
                ),
            });
        }
        let gicd = t.translate(i, regs[0].0)?;
        let mut redist_regions = Vec::with_capacity(nr);
        for &(a, s) in &regs[1..=nr] {
            redist_regions.push((t.translate(i, a)?, s));
        }
        let redist_stride = t.prop(i, "redistributor-stride").and_then(|v| match v.len() {
            4 => super::raw::be32(v, 0).map(u64::from),
            8 => Some(u64::from_be_bytes(v.try_into().ok()?)),
            _ => None,
        });
        return Ok(Some(Gic::V3 { gicd, redist_regions, redist_stride }));
    }
    if let Some(i) = first_available(t, &["arm,cortex-a15-gic", "arm,gic-400"]) {
        let regs = t.reg(i)?;
        if regs.len() < 2 {
            return Err(DtError::BadProperty {
                node: t.path(i),
                prop: "reg",
                what: format!("{} entries, need the distributor and CPU interface", regs.len()),
            });
        }
        return Ok(Some(Gic::V2 {
            gicd: t.translate(i, regs[0].0)?,
            gicc: t.translate(i, regs[1].0)?,
        }));
    }
    Ok(None)
}

/// The virtual timer's INTID from the "arm,armv8-timer" node's third `interrupts` specifier
/// (secure phys, non-secure phys, virt, hyp), decoded with the GIC's 3-cell format. `None`
/// when there is no timer node or it has fewer than three entries.
pub fn vtimer_intid(t: &Tree) -> Result<Option<u32>, DtError> {
    let Some(i) = first_available(t, &["arm,armv8-timer", "arm,armv7-timer"]) else {
        return Ok(None);
    };
    let Some(v) = t.prop(i, "interrupts") else { return Ok(None) };
    if v.len() % 12 != 0 {
        return Err(DtError::BadProperty {
            node: t.path(i),
            prop: "interrupts",
            what: format!("{} bytes, not a list of 3-cell GIC specifiers", v.len()),
        });
    }
    if v.len() < 36 {
        return Ok(None);
    }
    let cell = |k: usize| super::raw::be32(v, 24 + 4 * k).unwrap_or(0);
    let (kind, num) = (cell(0), cell(1));
    let intid = match kind {
        GIC_PPI if num < 16 => 16 + num,
        GIC_SPI if num < 988 => 32 + num,
        _ => {
            return Err(DtError::BadProperty {
                node: t.path(i),
                prop: "interrupts",
                what: format!("virtual timer specifier <{kind} {num}> is not a PPI or SPI"),
            })
        }
    };
    Ok(Some(intid))
}
