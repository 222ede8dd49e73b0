//! `BootInfo::dma_limit` is Linux's `of_dma_get_max_cpu_address(NULL) + 1`: each rule of that
//! walk on a small hand-built tree.
use super::*;

/// The DMA limit of a tree whose root (2 address cells, 1 size cell, like the Pi's) gets its
/// children from `body`.
fn limit(body: impl FnOnce(&mut Builder)) -> Result<Option<u64>, DtError> {
    let mut b = Builder::default();
    b.begin("").cells("#address-cells", &[2]).cells("#size-cells", &[1]);
    body(&mut b);
    b.end();
    parse_lenient(&b.finish()).map(|i| i.dma_limit)
}

/// A bus node with the given cells and `dma-ranges`, left open for children.
fn bus<'a>(b: &'a mut Builder, name: &str, cells: [u32; 2], dma: &[u32]) -> &'a mut Builder {
    b.begin(name).cells("#address-cells", &[cells[0]]).cells("#size-cells", &[cells[1]]);
    b.cells("dma-ranges", dma)
}

/// The Raspberry Pi 4's DMA buses as the Raspberry Pi DTB has them: /soc maps the first GiB and
/// the 0xfc000000 peripheral window, /emmc2bus the first GiB (B0 SoC) or 0..0xfc000000 (C0:
/// the firmware rewrites it), /scb 16 GiB with a PCIe bridge limited to 3 GiB, and optionally
/// the root-level `zone_dma` node.
fn rpi(b: &mut Builder, soc_only: bool, c0: bool, zone_dma: bool) {
    let soc = [0xc000_0000, 0, 0, 0x4000_0000, 0x7c00_0000, 0, 0xfc00_0000, 0x380_0000];
    bus(b, "soc", [1, 1], &soc).end();
    if soc_only {
        return;
    }
    let emmc2 = if c0 { [0, 0, 0, 0, 0xfc00_0000] } else { [0, 0xc000_0000, 0, 0, 0x4000_0000] };
    bus(b, "emmc2bus", [2, 1], &emmc2).end();
    bus(b, "scb", [2, 2], &[4, 0x7c00_0000, 0, 0xfc00_0000, 0, 0x380_0000, 0, 0, 0, 0, 4, 0]);
    bus(b, "pcie@7d500000", [3, 2], &[0x200_0000, 0, 0, 0, 0, 0, 0xc000_0000])
        .str("device_type", "pci")
        .end();
    b.end();
    if zone_dma {
        bus(b, "zone_dma", [1, 1], &[0, 0, 0, 0x4000_0000]).end();
    }
}

#[test]
fn minimum_over_every_dma_ranges() {
    // /soc alone: its largest entry ends at 0xff800000. That was the old rule's answer (the
    // largest end over /soc's dma-ranges), wrong for the Raspberry Pi DTB.
    assert_eq!(limit(|b| rpi(b, true, false, false)), Ok(Some(0xff80_0000)));
    // Linux takes the minimum over the whole tree: /emmc2bus caps it at 1 GiB on a B0 SoC...
    assert_eq!(limit(|b| rpi(b, false, false, false)), Ok(Some(0x4000_0000)));
    assert_eq!(limit(|b| rpi(b, false, false, true)), Ok(Some(0x4000_0000)));
    // ...and on a C0 the PCIe bridge (3 GiB, translated through /scb) would be the lowest: the
    // Raspberry Pi DTB's zone_dma node is what keeps ZONE_DMA at 1 GiB there.
    assert_eq!(limit(|b| rpi(b, false, true, false)), Ok(Some(0xc000_0000)));
    assert_eq!(limit(|b| rpi(b, false, true, true)), Ok(Some(0x4000_0000)));
    // Nothing described: no limit (PHYS_ADDR_MAX).
    assert_eq!(limit(|_| {}), Ok(None));
}

#[test]
fn disabled_subtrees_and_empty_dma_ranges_do_not_count() {
    // for_each_available_child_of_node: a disabled bus and everything below it is skipped.
    let tree = |status: &str| {
        limit(|b| {
            bus(b, "a", [1, 1], &[0, 0, 0, 0x1000_0000]).str("status", status).end();
            b.begin("b").str("status", status).cells("#address-cells", &[1]);
            b.cells("#size-cells", &[1]);
            bus(b, "c", [1, 1], &[0, 0, 0x2000_0000]).end().end();
            // `dma-ranges;` (empty) means 1:1 with no limit.
            bus(b, "d", [1, 1], &[]).end();
        })
    };
    assert_eq!(tree("disabled"), Ok(None));
    assert_eq!(tree("fail"), Ok(None));
    assert_eq!(tree("okay"), Ok(Some(0x1000_0000)));
}

#[test]
fn cpu_addresses_are_translated_through_parent_buses() {
    // p maps its child address 0 to CPU 0x80000000 (512 MiB); q has no dma-ranges (1:1);
    // c's window starts at q's 0, so at CPU 0x80000000, and is 16 MiB long.
    let tree = |c_parent: u32| {
        limit(|b| {
            bus(b, "p", [1, 1], &[0, 0, 0x8000_0000, 0x2000_0000]);
            b.begin("q").cells("#address-cells", &[1]).cells("#size-cells", &[1]);
            bus(b, "c", [1, 1], &[0x1000_0000, c_parent, 0x100_0000]).end().end().end();
        })
    };
    assert_eq!(tree(0), Ok(Some(0x8100_0000)));
    // A window outside p's dma-ranges cannot be translated: Linux then uses OF_BAD_ADDR (all
    // ones) in its u64 sum, which wraps to size - 1, and ends up with size - 2. Kept as Linux
    // computes it, so the zones are the ones Linux would make.
    assert_eq!(tree(0x3000_0000), Ok(Some(0xff_ffff)));
}

#[test]
fn the_root_own_dma_ranges_is_linux_arithmetic_too() {
    // The root has no parent bus, so its entries never translate (OF_BAD_ADDR): 1 GiB there
    // gives 0x3ffffffe as the highest address, as in Linux.
    assert_eq!(
        limit(|b| {
            b.cells("dma-ranges", &[0, 0, 0, 0, 0x4000_0000]);
        }),
        Ok(Some(0x3fff_ffff))
    );
}

#[test]
fn pci_buses_compare_the_address_space() {
    // A bridge below a PCIe host bridge: its window's parent address is a PCI address (space
    // code in the first cell), matched against the host bridge's dma-ranges by space.
    let tree = |space: u32| {
        limit(|b| {
            bus(b, "pcie@0", [3, 2], &[0x200_0000, 0, 0, 0, 0, 0, 0x8000_0000])
                .str("device_type", "pci");
            let window = [0x200_0000, 0, 0, space, 0, 0x1000_0000, 0, 0x1000_0000];
            bus(b, "bridge@0", [3, 2], &window).end().end();
        })
    };
    // 32-bit and 64-bit memory are the same space: CPU 0x10000000 + 256 MiB.
    assert_eq!(tree(0x200_0000), Ok(Some(0x2000_0000)));
    assert_eq!(tree(0x300_0000), Ok(Some(0x2000_0000)));
    // I/O space does not match the memory window: OF_BAD_ADDR, as above.
    assert_eq!(tree(0x100_0000), Ok(Some(0x0fff_ffff)));
}

#[test]
fn contiguous_entries_merge() {
    // Two entries contiguous in bus and CPU space are one range (of_pci_range_parser_one).
    let two = [0, 0, 0, 0x1000_0000, 0x1000_0000, 0, 0x1000_0000, 0x1000_0000];
    assert_eq!(
        limit(|b| {
            bus(b, "m", [1, 1], &two).end();
        }),
        Ok(Some(0x2000_0000))
    );
}

#[test]
fn malformed_dma_ranges_are_refused() {
    let e = limit(|b| {
        bus(b, "soc", [1, 1], &[0xc000_0000, 0, 0]).end();
    })
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "device tree: /soc: bad `dma-ranges`: length 12 is not a multiple of 16 bytes (cells 1/2/1)"
    );
    let e = limit(|b| {
        bus(b, "wide", [5, 1], &[0; 8]).end();
    })
    .unwrap_err();
    assert!(e.to_string().contains("/wide: bad `dma-ranges`: cell counts 5/2/1"), "{e}");
}

#[test]
fn absurd_cell_counts_on_the_way_up_are_untranslatable() {
    // A bus with 100 size cells above a constrained node: its entries cannot be decoded, so the
    // node's window is OF_BAD_ADDR (never a panic or a read past the property).
    let r = limit(|b| {
        bus(b, "p", [1, 100], &[0; 102]);
        bus(b, "c", [1, 1], &[0, 0, 0x1000]).end().end();
    });
    assert!(r.is_err(), "{r:?}"); // p's own dma-ranges is refused: 100 size cells
    let r = limit(|b| {
        b.begin("p").cells("#address-cells", &[1]).cells("#size-cells", &[100]);
        bus(b, "c", [1, 1], &[0, 0, 0x1000]).end().end();
    });
    assert_eq!(r, Ok(Some(0xfff)));
}
