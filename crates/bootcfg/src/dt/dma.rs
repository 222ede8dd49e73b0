//! The DMA zone limit as Linux computes it: `of_dma_get_max_cpu_address(NULL)`
//! (drivers/of/address.c), which arm64's `dma_limits_init()` turns into ZONE_DMA.
//!
//! Every node reached from the root through available children (`for_each_available_child_of_node`)
//! that has a non-empty `dma-ranges` contributes the highest CPU address any of its entries
//! reaches; the result is the minimum over all of them. Each entry's parent-bus address is turned
//! into a CPU address like `of_translate_dma_address()`: up through every ancestor's
//! `dma-ranges` (a missing or empty one is a 1:1 bus), with the PCI, ISA and flags-cell bus
//! rules of `of_busses[]`.
//!
//! On a Raspberry Pi 4 this is what finds 1 GiB: the upstream DTB's /soc and /emmc2bus both map
//! only the first GiB; the Raspberry Pi DTB's /soc has a second entry (the 0xfc000000 peripheral
//! window) and the firmware widens /emmc2bus on C0 SoCs, so it adds a root-level `zone_dma` node
//! "that exists only to be found by of_dma_get_max_cpu_address".
//!
//! Kept as Linux has it, on purpose: an entry whose CPU address cannot be translated counts as
//! OF_BAD_ADDR (all ones) with the same wrapping u64 arithmetic, and contiguous entries are
//! merged first (`of_pci_range_parser_one`), so the limit is the one Linux would use.
//! Differences: cell counts follow the devicetree spec like the rest of this crate (absent
//! `#address-cells`/`#size-cells` mean 2/1, Linux inherits the ancestor's), a `dma-ranges`
//! that is not a whole number of entries is refused with a [`DtError`] (Linux ignores the
//! tail), and `interconnects`/"dma-mem" DMA parents are not followed (no Pi or QEMU tree has
//! them).
use alloc::format;
use alloc::vec::Vec;

use super::raw::be32;
use super::tree::Tree;
use super::DtError;

/// Linux OF_MAX_ADDR_CELLS.
const MAX_ADDR_CELLS: usize = 4;
/// OF_BAD_ADDR.
const BAD: u64 = u64::MAX;

/// `of_busses[]`: how a bus node lays out its children's addresses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Bus {
    /// device_type "pci"/"pciex"/"vci"/"ht", or a node named "pcie": 3 address cells (the first
    /// holds the space code), 2 size cells.
    Pci,
    /// A node named "isa": 2 address cells (the first holds the I/O bit), 1 size cell.
    Isa,
    /// Any other bus with #address-cells = 3: the first cell is flags that must match.
    DefaultFlags,
    Default,
}

impl Bus {
    /// `of_match_bus(np)`.
    fn of(t: &Tree, np: usize) -> Bus {
        let name = t.nodes[np].name.split('@').next().unwrap_or("");
        let ty = t.str(np, "device_type");
        if matches!(ty, Some("pci" | "pciex" | "vci" | "ht")) || name == "pcie" {
            Bus::Pci
        } else if name == "isa" {
            Bus::Isa
        } else if t.cells(np).0 == 3 {
            Bus::DefaultFlags
        } else {
            Bus::Default
        }
    }

    fn flag_cells(self) -> usize {
        if self == Bus::Default {
            0
        } else {
            1
        }
    }

    /// `bus->count_cells(child)` for a child of bus node `np`.
    fn count_cells(self, t: &Tree, np: usize) -> (usize, usize) {
        match self {
            Bus::Pci => (3, 2),
            Bus::Isa => (2, 1),
            _ => {
                let (a, s) = t.cells(np);
                (a as usize, s as usize)
            }
        }
    }

    /// `bus->get_flags(addr)`: enough to tell whether two ranges may merge.
    fn flags(self, addr: &[u32]) -> u32 {
        match self {
            Bus::Pci => pci_space(addr[0]),
            Bus::Isa => addr[0] & 1,
            Bus::DefaultFlags => addr[0],
            Bus::Default => 0,
        }
    }

    /// `bus->map()`: the offset of `addr` inside `range`'s child window, or BAD.
    fn map(self, addr: &[u32], range: &[u32], na: usize, ns: usize, pna: usize) -> u64 {
        let flags_differ = match self {
            Bus::Pci => pci_space(addr[0]) != pci_space(range[0]),
            Bus::Isa => (addr[0] ^ range[0]) & 1 != 0,
            Bus::DefaultFlags => addr[0] != range[0],
            Bus::Default => false,
        };
        if flags_differ {
            return BAD;
        }
        let f = self.flag_cells();
        let cp = read(&range[f..na]);
        let s = read(&range[na + pna..na + pna + ns]);
        let da = read(&addr[f..na]);
        if da < cp || da >= cp.wrapping_add(s) {
            return BAD;
        }
        da - cp
    }

    /// `bus->translate()`: adds `offset` to an address of this bus, keeping a flags cell.
    fn translate(self, addr: &mut [u32], offset: u64) {
        let a = &mut addr[self.flag_cells()..];
        let v = read(a).wrapping_add(offset);
        a.fill(0);
        let n = a.len();
        if n > 1 {
            a[n - 2] = (v >> 32) as u32;
        }
        if n > 0 {
            a[n - 1] = v as u32;
        }
    }
}

/// The PCI address space code (phys.hi bits 24-25) reduced to what `of_bus_pci_map` compares:
/// 1 for I/O, 2 for memory (32- or 64-bit), 0 for configuration space.
fn pci_space(hi: u32) -> u32 {
    match (hi >> 24) & 3 {
        1 => 1,
        2 | 3 => 2,
        _ => 0,
    }
}

/// `of_read_number()`: the cells as one big-endian number, low 64 bits kept.
fn read(cells: &[u32]) -> u64 {
    cells.iter().fold(0u64, |a, &c| (a << 32) | c as u64)
}

/// OF_CHECK_COUNTS, plus at most 4 size cells (Linux reads any number; none of ours has more
/// than 2, and the bound keeps an entry on the stack).
fn counts_ok(na: usize, ns: usize) -> bool {
    (1..=MAX_ADDR_CELLS).contains(&na) && (1..=MAX_ADDR_CELLS).contains(&ns)
}

/// A property as big-endian cells (a trailing partial cell is dropped, as `len / 4` does).
fn cells_of(v: &[u8]) -> Vec<u32> {
    (0..v.len() / 4).map(|k| be32(v, 4 * k).unwrap_or(0)).collect()
}

/// `of_translate_dma_address(node, addr)`: `addr` is in `node`'s parent bus (the parent-address
/// part of a `dma-ranges` entry of `node`). BAD when some level has no matching entry, bad cell
/// counts, or `node` is the root.
fn translate_dma(t: &Tree, node: usize, in_addr: &[u32]) -> u64 {
    let Some(mut dev) = t.nodes[node].parent else { return BAD };
    let mut bus = Bus::of(t, dev);
    let (mut na, mut ns) = bus.count_cells(t, dev);
    if !counts_ok(na, ns) || in_addr.len() < na {
        return BAD;
    }
    let mut addr = [0u32; MAX_ADDR_CELLS];
    addr[..na].copy_from_slice(&in_addr[..na]);
    loop {
        let Some(parent) = t.nodes[dev].parent else { return read(&addr[..na]) };
        let pbus = Bus::of(t, parent);
        let (pna, pns) = pbus.count_cells(t, parent);
        if !counts_ok(pna, pns) {
            return BAD;
        }
        // of_translate_one(dev, bus, pbus, addr, na, ns, pna, "dma-ranges"): whole entries
        // only (rlen / 4 cells), decoded on the stack as they are tried.
        let ranges = t.prop(dev, "dma-ranges").unwrap_or(&[]);
        let width = (na + pna + ns) * 4;
        let offset = if ranges.is_empty() {
            let o = read(&addr[..na]);
            addr = [0; MAX_ADDR_CELLS];
            o
        } else {
            let mut r = [0u32; 3 * MAX_ADDR_CELLS];
            let hit = ranges[..ranges.len() / 4 * 4].chunks_exact(width).find_map(|raw| {
                for (k, c) in r.iter_mut().zip(raw.chunks_exact(4)) {
                    *k = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
                }
                let o = bus.map(&addr[..na], &r[..width / 4], na, ns, pna);
                (o != BAD).then_some(o)
            });
            let Some(o) = hit else { return BAD };
            addr = [0; MAX_ADDR_CELLS];
            addr[..pna].copy_from_slice(&r[na..na + pna]);
            o
        };
        pbus.translate(&mut addr[..pna], offset);
        (dev, bus, na, ns) = (parent, pbus, pna, pns);
    }
}

/// The highest CPU address reachable through node `i`'s own non-empty `dma-ranges` (Linux's
/// `cpu_end`), or `None` when it has none.
fn node_cpu_end(t: &Tree, i: usize) -> Result<Option<u64>, DtError> {
    let Some(v) = t.prop(i, "dma-ranges").filter(|v| !v.is_empty()) else { return Ok(None) };
    // of_dma_range_parser_init: the node's own cells for the child side and the size, the
    // parent's for the CPU side (the root's own when the root itself has dma-ranges).
    let (na, ns) = t.cells(i);
    let pna = t.cells(t.nodes[i].parent.unwrap_or(0)).0;
    let bad = |what: alloc::string::String| DtError::BadProperty {
        node: t.path(i),
        prop: "dma-ranges",
        what,
    };
    let max = MAX_ADDR_CELLS as u32;
    if na > max || pna > max || ns > max || na + pna + ns == 0 {
        return Err(bad(format!("cell counts {na}/{pna}/{ns} (child/parent/size) are not 0..=4")));
    }
    let (na, pna, ns) = (na as usize, pna as usize, ns as usize);
    let width = (na + pna + ns) * 4;
    if !v.len().is_multiple_of(width) {
        return Err(bad(format!(
            "length {} is not a multiple of {width} bytes (cells {na}/{pna}/{ns})",
            v.len()
        )));
    }
    let bus = Bus::of(t, i);
    let f = bus.flag_cells().min(na);
    let cells = cells_of(v);
    // for_each_of_range: each range absorbs the following ones while they are contiguous in
    // both bus and CPU space and have the same flags.
    let entry = |r: &[u32]| {
        let flags = if na > 0 { bus.flags(r) } else { 0 };
        let bus_addr = read(&r[f..na]);
        let cpu = translate_dma(t, i, &r[na..na + pna]);
        (flags, bus_addr, cpu, read(&r[na + pna..]))
    };
    let mut entries = cells.chunks_exact(na + pna + ns).map(entry).peekable();
    let mut cpu_end = 0u64;
    while let Some((flags, bus_addr, cpu, mut size)) = entries.next() {
        while let Some(&(f2, b2, c2, s2)) = entries.peek() {
            if f2 != flags || b2 != bus_addr.wrapping_add(size) || c2 != cpu.wrapping_add(size) {
                break;
            }
            size = size.wrapping_add(s2);
            entries.next();
        }
        let end = cpu.wrapping_add(size);
        if end > cpu_end {
            cpu_end = end - 1;
        }
    }
    Ok(Some(cpu_end))
}

/// `of_dma_get_max_cpu_address(NULL)`: the highest CPU physical address every DMA master
/// described by the tree can reach (inclusive). `None` means PHYS_ADDR_MAX: no constraint.
pub fn max_cpu_address(t: &Tree) -> Result<Option<u64>, DtError> {
    let mut visited = Vec::with_capacity(t.nodes.len());
    let mut max = u64::MAX;
    for i in 0..t.nodes.len() {
        // Nodes are stored depth-first, so a parent's verdict is known before its children's.
        let seen = match t.nodes[i].parent {
            None => true,
            Some(p) => visited[p] && t.available(i),
        };
        visited.push(seen);
        if let Some(end) = if seen { node_cpu_end(t, i)? } else { None } {
            max = max.min(end);
        }
    }
    Ok((max != u64::MAX).then_some(max))
}
