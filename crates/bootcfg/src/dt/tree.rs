//! A flat copy of the node tree (built with the `fdt` crate) plus the lookups the boot code needs
//! and the crate lacks: full-path and alias resolution, phandles, cell-sized `reg` decoding and
//! `ranges` translation up to the root.
//!
//! Why flat: fdt 0.2's `Node::parent()` only knows one level, and address translation needs
//! every ancestor. Nodes are stored in depth-first order with a parent index, so a node's
//! ancestors, children and path are cheap to compute and the walk needs no recursion.

use super::error::DtError;
use super::raw::MAX_DEPTH;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use fdt::nodes::AsNode;
use fdt::parsing::{unaligned::UnalignedParser, NoPanic};

type Parser<'a> = (UnalignedParser<'a>, NoPanic);
type FdtNode<'a> = fdt::nodes::Node<'a, Parser<'a>>;

/// Linux's OF_MAX_ADDR_CELLS: wider addresses (none on our boards) are refused.
const MAX_CELLS: u32 = 4;

pub struct Node<'a> {
    /// Full node name with unit address ("serial@7e201000"); "" for the root.
    pub name: String,
    pub parent: Option<usize>,
    pub props: Vec<(&'a str, &'a [u8])>,
}

pub struct Tree<'a> {
    pub nodes: Vec<Node<'a>>,
}

fn fdt_err(e: fdt::FdtError) -> DtError {
    DtError::Fdt(e.to_string())
}

fn flatten<'a>(n: FdtNode<'a>, parent: Option<usize>) -> Result<Node<'a>, DtError> {
    let nn = n.name().map_err(fdt_err)?;
    let name = match (parent, nn.unit_address) {
        (None, _) => String::new(),
        (Some(_), Some(ua)) => format!("{}@{}", nn.name, ua),
        (Some(_), None) => nn.name.to_string(),
    };
    let mut props = Vec::new();
    for p in n.properties().map_err(fdt_err)?.iter() {
        let p = p.map_err(fdt_err)?;
        props.push((p.name, p.value));
    }
    Ok(Node { name, parent, props })
}

/// Reads `cells` big-endian u32 cells as one number, keeping the low 64 bits like Linux's
/// `of_read_number()`.
fn read_cells(b: &[u8], cells: u32) -> u64 {
    b.chunks_exact(4)
        .take(cells as usize)
        .fold(0u64, |acc, c| (acc << 32) | u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64)
}

/// Splits a property into `(a, b, c)` tuples of the given cell counts (c may be 0).
fn tuples(b: &[u8], cells: [u32; 3]) -> Result<Vec<[u64; 3]>, String> {
    if cells.iter().any(|&c| c > MAX_CELLS) {
        return Err(format!("cell counts {cells:?} exceed {MAX_CELLS}"));
    }
    let width = cells.iter().sum::<u32>() as usize * 4;
    if width == 0 || !b.len().is_multiple_of(width) {
        return Err(format!(
            "length {} is not a multiple of {width} bytes (cells {cells:?})",
            b.len()
        ));
    }
    Ok(b.chunks_exact(width)
        .map(|t| {
            let (a, rest) = t.split_at(cells[0] as usize * 4);
            let (m, s) = rest.split_at(cells[1] as usize * 4);
            [read_cells(a, cells[0]), read_cells(m, cells[1]), read_cells(s, cells[2])]
        })
        .collect())
}

impl<'a> Tree<'a> {
    /// Builds the flat tree; `dtb` must already have passed `raw::check_structure`.
    pub fn build(dtb: &'a [u8]) -> Result<Self, DtError> {
        let fdt = fdt::Fdt::new_unaligned_fallible(dtb).map_err(fdt_err)?;
        let root = fdt.root().map_err(fdt_err)?.as_node();
        let mut nodes = Vec::from([flatten(root, None)?]);
        let mut stack = Vec::from([(root.children().map_err(fdt_err)?.iter(), 0usize)]);
        while let Some((children, parent)) = stack.last_mut() {
            // A failing iterator repeats its error forever, so stop at the first one.
            match children.next() {
                None => {
                    stack.pop();
                }
                Some(Err(e)) => return Err(fdt_err(e)),
                Some(Ok(child)) => {
                    let parent = *parent;
                    nodes.push(flatten(child, Some(parent))?);
                    if stack.len() >= MAX_DEPTH {
                        return Err(DtError::Fdt("nodes nested too deeply".into()));
                    }
                    stack.push((child.children().map_err(fdt_err)?.iter(), nodes.len() - 1));
                }
            }
        }
        Ok(Tree { nodes })
    }

    pub fn prop(&self, i: usize, name: &str) -> Option<&'a [u8]> {
        self.nodes[i].props.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
    }

    /// The strings of a stringlist property (`compatible = "a\0b"`), skipping invalid UTF-8.
    pub fn strings(&self, i: usize, name: &str) -> impl Iterator<Item = &'a str> {
        let v = self.prop(i, name).unwrap_or(&[]);
        let v = v.strip_suffix(&[0]).unwrap_or(v);
        v.split(|&c| c == 0).filter(|_| !v.is_empty()).filter_map(|s| core::str::from_utf8(s).ok())
    }

    /// First string of a property.
    pub fn str(&self, i: usize, name: &str) -> Option<&'a str> {
        self.strings(i, name).next()
    }

    /// First cell of a property, like `of_property_read_u32()`.
    pub fn u32(&self, i: usize, name: &str) -> Option<u32> {
        super::raw::be32(self.prop(i, name)?, 0)
    }

    pub fn is_compatible(&self, i: usize, compat: &str) -> bool {
        self.strings(i, "compatible").any(|c| c == compat)
    }

    /// Linux's `of_device_is_available()`: no status, "okay" or "ok".
    pub fn available(&self, i: usize) -> bool {
        matches!(self.str(i, "status"), None | Some("okay") | Some("ok"))
    }

    pub fn children(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        (i + 1..self.nodes.len()).filter(move |&c| self.nodes[c].parent == Some(i))
    }

    /// Child by full name, else (for a name without unit address) by base name.
    pub fn child(&self, i: usize, name: &str) -> Option<usize> {
        let base = |c: usize| self.nodes[c].name.split('@').next() == Some(name);
        let exact = self.children(i).find(|&c| self.nodes[c].name == name);
        exact.or_else(|| self.children(i).find(|&c| !name.contains('@') && base(c)))
    }

    pub fn path(&self, i: usize) -> String {
        let mut parts = Vec::new();
        let mut n = Some(i);
        while let Some(j) = n.filter(|&j| j != 0) {
            parts.push(self.nodes[j].name.as_str());
            n = self.nodes[j].parent;
        }
        if parts.is_empty() {
            return "/".into();
        }
        parts.iter().rev().fold(String::new(), |acc, p| acc + "/" + p)
    }

    /// Resolves an absolute path ("/soc/serial@7e215040") or an alias with an optional relative
    /// tail ("serial1", "serial1/child"), like Linux's `of_find_node_opts_by_path()`. A
    /// component without a unit address matches the first child with that base name.
    pub fn resolve(&self, spec: &str) -> Option<usize> {
        let (start, rest) = match spec.strip_prefix('/') {
            Some(rest) => (0, rest),
            None => {
                let (alias, rest) = spec.split_once('/').unwrap_or((spec, ""));
                let target = self.str(self.child(0, "aliases")?, alias)?;
                if !target.starts_with('/') {
                    return None; // an alias must name a full path; this also stops alias loops
                }
                (self.resolve(target)?, rest)
            }
        };
        rest.split('/').filter(|c| !c.is_empty()).try_fold(start, |n, c| self.child(n, c))
    }

    pub fn by_phandle(&self, ph: u32) -> Option<usize> {
        (0..self.nodes.len())
            .find(|&i| self.u32(i, "phandle").or(self.u32(i, "linux,phandle")) == Some(ph))
    }

    /// `#address-cells`/`#size-cells` a node defines for its children (spec defaults 2 and 1).
    pub fn cells(&self, i: usize) -> (u32, u32) {
        (self.u32(i, "#address-cells").unwrap_or(2), self.u32(i, "#size-cells").unwrap_or(1))
    }

    fn bad(&self, i: usize, prop: &'static str, what: String) -> DtError {
        DtError::BadProperty { node: self.path(i), prop, what }
    }

    /// The `reg` entries of node `i` as (bus address, size), decoded with the parent's cells.
    /// `Ok(empty)` when there is no `reg`.
    pub fn reg(&self, i: usize) -> Result<Vec<(u64, u64)>, DtError> {
        let Some(v) = self.prop(i, "reg") else { return Ok(Vec::new()) };
        let (ac, sc) = self.cells(self.nodes[i].parent.unwrap_or(0));
        let t = tuples(v, [ac, sc, 0]).map_err(|w| self.bad(i, "reg", w))?;
        Ok(t.into_iter().map(|[a, s, _]| (a, s)).collect())
    }

    /// A `ranges`/`dma-ranges` property of bus `bus`: (child address, parent address, size)
    /// triplets using the bus's #address-cells, its parent's #address-cells and the bus's
    /// #size-cells. `None` if the property is absent, `Some(empty)` if it is empty (identity).
    pub fn ranges(&self, bus: usize, prop: &'static str) -> Result<Option<Vec<[u64; 3]>>, DtError> {
        let Some(v) = self.prop(bus, prop) else { return Ok(None) };
        if v.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let (ac, sc) = self.cells(bus);
        let pac = self.cells(self.nodes[bus].parent.unwrap_or(0)).0;
        tuples(v, [ac, pac, sc]).map(Some).map_err(|w| self.bad(bus, prop, w))
    }

    /// Translates a bus address from node `i`'s `reg` into a CPU physical address by applying
    /// every ancestor bus's `ranges`, as Linux's `of_translate_address()` does. A bus without
    /// `ranges` is not memory-mapped, so translation fails there.
    pub fn translate(&self, i: usize, mut addr: u64) -> Result<u64, DtError> {
        let mut bus = self.nodes[i].parent;
        while let Some(b) = bus.filter(|&b| b != 0) {
            let Some(ranges) = self.ranges(b, "ranges")? else {
                return Err(self.bad(
                    b,
                    "ranges",
                    "missing, so the bus is not memory-mapped".into(),
                ));
            };
            if !ranges.is_empty() {
                let hit = ranges.iter().find(|[c, _, s]| addr >= *c && addr - c < *s);
                let [c, p, _] =
                    hit.ok_or_else(|| self.bad(b, "ranges", format!("no entry covers {addr:#x}")))?;
                addr = (addr - c).checked_add(*p).ok_or_else(|| {
                    self.bad(b, "ranges", format!("{addr:#x} overflows when translated"))
                })?;
            }
            bus = self.nodes[b].parent;
        }
        Ok(addr)
    }

    /// First `reg` entry of `i`, translated to a CPU physical address.
    pub fn mmio(&self, i: usize) -> Result<(u64, u64), DtError> {
        let (addr, size) =
            *self.reg(i)?.first().ok_or_else(|| self.bad(i, "reg", "missing or empty".into()))?;
        Ok((self.translate(i, addr)?, size))
    }
}
