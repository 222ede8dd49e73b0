//! The two DTBs a Raspberry Pi 4 meets, as its firmware hands them to the kernel: Debian's build
//! of the upstream Linux DTB (`bcm2711-fw-*.dtb`, what `make sdcard` boots) and the Raspberry Pi
//! firmware's own (`rpi-fw-*.dtb`), each on a 1, 2, 4 and 8 GiB board. scripts/dt-fixtures.sh
//! makes them (what the firmware adds is described there). The whole BootInfo is checked:
//! memory, reservations, zones, console, CPUs and their spin-table slots, MMIO bases, bootargs.
use super::*;
use mm_page_alloc::zone::{arch_zone_limits, zone_spans, ZONE_DMA, ZONE_DMA32, ZONE_NORMAL};
use mm_page_alloc::Memblock;

const GIB: u64 = 1 << 30;
const PAGE: u64 = 4096;

/// RAM the firmware reports on each board: everything below the VideoCore's share of the first
/// GiB (gpu_mem=76: 0x3b400000 bytes), the rest below the 0xfc000000 peripherals, and on 8 GiB
/// boards everything above 4 GiB (two 2 GiB entries in the blob, merged here).
fn ram(gib: u64) -> Vec<MemRange> {
    let mut m = vec![MemRange { base: 0, size: 0x3b40_0000 }];
    match gib {
        1 => {}
        2 => m.push(MemRange { base: GIB, size: GIB }),
        4 => m.push(MemRange { base: GIB, size: 0xbc00_0000 }),
        8 => m.extend([
            MemRange { base: GIB, size: 0xbc00_0000 },
            MemRange { base: 4 * GIB, size: 4 * GIB },
        ]),
        _ => unreachable!(),
    }
    m
}

/// The zones the kernel makes from `i` (kernel/src/mm/init.rs: memblock from `i.memory`,
/// `zone_dma_limit = dma_limit - 1`, then PageAllocator::new's arch_zone_limits + zone_spans):
/// (start, end) PFN spans and present pages, indexed by ZONE_DMA, ZONE_DMA32, ZONE_NORMAL.
fn zones(i: &BootInfo) -> [((u64, u64), u64); 3] {
    let mut mb = Memblock::new();
    for m in &i.memory {
        mb.add(m.base, m.size).unwrap();
    }
    let (start, end) = (mb.start_of_dram(), mb.end_of_dram());
    let limits = arch_zone_limits(start, end, i.dma_limit.map(|l| l - 1));
    let spans = zone_spans(start / PAGE, end.div_ceil(PAGE), &limits);
    spans.map(|(s, e)| {
        let present = i
            .memory
            .iter()
            .map(|m| (m.end() / PAGE).min(e).saturating_sub((m.base / PAGE).max(s)))
            .sum();
        ((s, e), present)
    })
}

/// Checks one fixture; `rpi` selects the Raspberry Pi DTB (else the upstream one).
fn check(rpi: bool, gib: u64) {
    let name = format!("{}-fw-{gib}G.dtb", if rpi { "rpi" } else { "bcm2711" });
    let Some(blob) = fixture(&name) else { return };
    // Strict: the firmware filled /memory, so this is a DTB the kernel boots with.
    let i = parse(&blob).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(i.dtb_size, blob.len() as u64);

    // The console is the mini UART either way: upstream's stdout-path names it as serial1,
    // the Raspberry Pi DTB's as serial0 (its aliases are swapped: serial1 is the PL011 that
    // talks to Bluetooth). Also: CPUs with the armstub's spin table at 0xd8..0xf0, the stub's
    // page in /memreserve/, the 64 MiB CMA pool, GIC-400, DMA limit 1 GiB, GPIO/AUX/PM/mailbox.
    check_pi_common(&i, if rpi { "serial0:115200n8" } else { "serial1:115200n8" });
    let t = tree::Tree::build(&blob).unwrap();
    let alias = t.path(t.resolve(if rpi { "serial0" } else { "serial1" }).unwrap());
    assert_eq!(i.console.as_ref().unwrap().path, alias, "{name}");

    assert_eq!(i.memory, ram(gib), "{name}");
    let z = zones(&i);
    let gpu = (GIB - 0x3b40_0000) / PAGE; // the VideoCore's part of the first GiB
    match gib {
        1 => {
            // All RAM is below 1 GiB: ZONE_DMA only (it ends where RAM ends).
            assert_eq!(z[ZONE_DMA], ((0, 0x3b400), 0x3b400));
            assert_eq!((z[ZONE_DMA32].1, z[ZONE_NORMAL].1), (0, 0));
        }
        2 => {
            assert_eq!(z[ZONE_DMA], ((0, 0x40000), 0x40000 - gpu));
            assert_eq!(z[ZONE_DMA32], ((0x40000, 0x80000), 0x40000));
            assert_eq!(z[ZONE_NORMAL].1, 0);
        }
        4 => {
            // ZONE_DMA below 1 GiB, ZONE_DMA32 the rest (up to the peripherals at 0xfc000000),
            // no ZONE_NORMAL.
            assert_eq!(z[ZONE_DMA], ((0, 0x40000), 0x40000 - gpu));
            assert_eq!(z[ZONE_DMA32], ((0x40000, 0xfc000), 0xbc000));
            assert_eq!(z[ZONE_NORMAL], ((0xfc000, 0xfc000), 0));
        }
        8 => {
            // ZONE_DMA32 spans up to 4 GiB (the peripheral hole included), ZONE_NORMAL is the
            // 4 GiB above.
            assert_eq!(z[ZONE_DMA], ((0, 0x40000), 0x40000 - gpu));
            assert_eq!(z[ZONE_DMA32], ((0x40000, 0x100000), 0xbc000));
            assert_eq!(z[ZONE_NORMAL], ((0x100000, 0x200000), 0x100000));
        }
        _ => unreachable!(),
    }

    // /chosen/bootargs: the DTB's own (Raspberry Pi DTB only), the firmware's, two spaces,
    // cmdline.txt. Other subsystems' parameters are listed as ignored; ours apply.
    let (line, cfg) = crate::config::parse_bootargs(&i.bootargs).unwrap();
    assert!(line.ends_with("vc_mem.mem_size=0x40000000  console=ttyS0,115200 mm.vfree=single test_vmalloc.nr_threads=2"), "{line}");
    assert_eq!(line.starts_with("coherent_pool=1M 8250.nr_uarts=1 "), rpi, "{line}");
    assert_eq!(cfg.vfree, crate::config::VfreeMode::Single);
    assert_eq!(cfg.test_vmalloc, [("nr_threads".into(), Some("2".into()))]);
    for p in ["video", "smsc95xx.macaddr", "vc_mem.mem_base", "console"] {
        assert!(cfg.ignored.iter().any(|k| k == p), "{p} not ignored: {:?}", cfg.ignored);
    }
    assert_eq!(cfg.ignored.iter().any(|k| k == "coherent_pool"), rpi);
}

#[test]
fn upstream_dtb_1g() {
    check(false, 1);
}
#[test]
fn upstream_dtb_2g() {
    check(false, 2);
}
#[test]
fn upstream_dtb_4g() {
    check(false, 4);
}
#[test]
fn upstream_dtb_8g() {
    check(false, 8);
}
#[test]
fn rpi_dtb_1g() {
    check(true, 1);
}
#[test]
fn rpi_dtb_2g() {
    check(true, 2);
}
#[test]
fn rpi_dtb_4g() {
    check(true, 4);
}
#[test]
fn rpi_dtb_8g() {
    check(true, 8);
}

/// Why the Raspberry Pi DTB needs Linux's rule: its /soc alone reaches 0xff800000 (the old
/// "largest end over /soc" rule), and on the 8 GiB board (C0 SoC) the firmware has widened
/// /emmc2bus to 0xfc000000; only zone_dma still says 1 GiB.
#[test]
fn rpi_dtb_dma_ranges() {
    let Some(blob) = fixture("rpi-fw-8G.dtb") else { return };
    let t = tree::Tree::build(&blob).unwrap();
    let end = |path: &str| {
        let i = t.resolve(path).unwrap();
        let r = t.ranges(i, "dma-ranges").unwrap().unwrap();
        r.iter().map(|[_, p, s]| p + s).max().unwrap()
    };
    assert_eq!(end("/soc"), 0xff80_0000);
    assert_eq!(end(t.str(t.resolve("/aliases").unwrap(), "emmc2bus").unwrap()), 0xfc00_0000);
    assert_eq!(end("/zone_dma"), 0x4000_0000);
    assert_eq!(parse(&blob).unwrap().dma_limit, Some(0x4000_0000));
}

/// `dtoverlay=disable-bt`: serial0 is the PL011 on GPIO14/15, and stdout-path follows it.
#[test]
fn rpi_dtb_disable_bt_console_is_the_pl011() {
    let Some(blob) = fixture("rpi-fw-disable-bt-4G.dtb") else { return };
    let i = parse(&blob).unwrap();
    let c = i.console.as_ref().unwrap();
    assert_eq!(
        (c.kind, c.base, c.path.as_str()),
        (ConsoleKind::Pl011, 0xfe20_1000, "/soc/serial@7e201000")
    );
    assert_eq!(&c.fallback_reason, &None);
    assert_eq!(i.stdout_path, "serial0:115200n8");
    assert_eq!(i.gpio, Some(0xfe20_0000));
}
