//! The boot flow on the boot CPU: one call per stage, each handing a typed value to the next
//! (see docs in the README "Design" section).

use alloc::format;
use alloc::string::String;
use core::fmt::Write;

use crate::arch::{self, mmu};
use crate::{print, println};
use bootcfg::{config, dt};

/// Boot-time heap: device-tree results, test bookkeeping, percpu chunk metadata (which grows with
/// the percpu objects alive: 4 workers x 35000 objects in the stress preset outgrew 4 MiB).
/// Never on an allocator hot path.
const HEAP_SIZE: usize = 20 << 20;
#[repr(C, align(4096))]
struct HeapSpace([u8; HEAP_SIZE]);
static mut HEAP_SPACE: HeapSpace = HeapSpace([0; HEAP_SIZE]);

#[global_allocator]
static HEAP: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();

/// Stops with `code` after a fatal message.
fn fatal(code: u32, msg: core::fmt::Arguments) -> ! {
    println!("FATAL: {}", msg);
    arch::exit(code)
}

/// The device tree as a byte slice, through head.S's 4 MiB DTB window.
fn dtb_slice(dtb_pa: u64) -> &'static [u8] {
    let va = arch::FDT_VA + (dtb_pa & 0x1f_ffff);
    let window = 0x40_0000 - (dtb_pa & 0x1f_ffff) as usize;
    // totalsize is at offset 4 (big endian); the parser checks it against the slice.
    // SAFETY: head.S maps a 4 MiB window at FDT_VA over the 2 MiB-aligned block holding the DTB, so
    // the 8 header bytes at va are mapped (a DTB cannot start in the window's last 8 bytes:
    // totalsize >= 40).
    let hdr = unsafe { core::slice::from_raw_parts(va as *const u8, 8) };
    let total = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
    let len = if total >= 8 { total.min(window) } else { window.min(64) };
    // SAFETY: len <= window, the mapped bytes from va to the end of the 4 MiB window; the blob is
    // never written while this slice lives (no one writes the DTB).
    unsafe { core::slice::from_raw_parts(va as *const u8, len) }
}

/// How the mini UART's divisor was chosen (for the banner).
static UART_CLOCK: spin::Once<bootcfg::uart::ClockChoice> = spin::Once::new();

/// Maps and programs the console the device tree chose.
fn console_init(info: &dt::BootInfo) -> Result<(), alloc::string::String> {
    let Some(c) = info.console.as_ref() else {
        return Err("device tree: no usable console".into());
    };
    let va =
        mmu::early_ioremap(c.base, c.size.max(0x40)).ok_or("early page-table pool exhausted")?;
    if info.board == dt::Board::RaspberryPi4 {
        // Real hardware needs pin muxing and the baud rate (QEMU's models ignore both). Every
        // base comes from the DT (the GPIO block's window is 0x100: the BCM2711 pull
        // registers at 0xe4-0xf0 lie past the DT's 0xb4). Without a GPIO node the pins stay as
        // the firmware set them (enable_uart=1 does).
        let gpio = match info.gpio {
            Some(pa) => {
                Some(mmu::early_ioremap(pa, 0x100).ok_or("early page-table pool exhausted")?)
            }
            None => None,
        };
        match c.kind {
            // SAFETY: gpio maps the GPIO block and va the PL011 (both from early_ioremap of the
            // DT's addresses just above).
            dt::ConsoleKind::Pl011 => unsafe {
                if let Some(gpio) = gpio {
                    crate::board::rpi4::set_gpio14_15(gpio, 4); // ALT0
                }
                crate::console::Pl011::new(va).init(c.clock_hz.unwrap_or(48_000_000));
            },
            // SAFETY: gpio maps the GPIO block, va the mini UART and aux its AUX block
            // (early_ioremap of the DT's addresses).
            dt::ConsoleKind::MiniUart => unsafe {
                let aux_pa = info.aux.ok_or("device tree: no brcm,bcm2835-aux node")?;
                let aux =
                    mmu::early_ioremap(aux_pa, 0x100).ok_or("early page-table pool exhausted")?;
                let uart = crate::console::MiniUart::new(va);
                let aux_enables = (aux + 4) as *mut u32;
                let (enabled, fw_div) = uart.firmware_setup(aux_enables);
                let choice = bootcfg::uart::choose(enabled, fw_div, || {
                    let mbox = mmu::early_ioremap(info.mbox?, 0x40)?;
                    crate::board::rpi4::mailbox_get_clock_rate(mbox, bootcfg::uart::CLOCK_CORE)
                });
                if let (Some(_), Some(gpio)) = (choice.program(), gpio) {
                    crate::board::rpi4::set_gpio14_15(gpio, 2); // ALT5
                }
                uart.init(aux_enables, choice.program());
                UART_CLOCK.call_once(|| choice);
            },
        }
    }
    // SAFETY: va is the console's register block mapped (device memory) by early_ioremap above;
    // fixmap mappings are never removed.
    unsafe { crate::console::set_uart(c.kind, va) };
    Ok(())
}

fn banner(info: &dt::BootInfo, bootargs: &str, cfg: &config::Config, kimage_pa: u64) {
    let mut w = crate::console::Console;
    let _ = writeln!(
        w,
        "mmkernel {} on {:?} ({}) at EL{}",
        env!("CARGO_PKG_VERSION"),
        info.board,
        info.model,
        arch::current_el()
    );
    for (i, c) in info.cpus.iter().enumerate() {
        let _ = writeln!(w, "  cpu{i}: mpidr {:#x} enable-method {:?}", c.mpidr, c.enable);
    }
    let _ = writeln!(w, "  psci: {:?}", info.psci);
    for m in &info.memory {
        let _ = writeln!(
            w,
            "  memory: [{:#011x}-{:#011x}] {} MiB",
            m.base,
            m.base + m.size - 1,
            m.size >> 20
        );
    }
    for r in &info.reserved {
        let _ = writeln!(
            w,
            "  reserved: [{:#011x}-{:#011x}] {:?}",
            r.base,
            r.base + r.size.max(1) - 1,
            r.kind
        );
    }
    let (_, kend) = kernel_image_range(kimage_pa);
    let _ = writeln!(
        w,
        "  kernel image: [{:#011x}-{:#011x}] at {:#x}",
        kimage_pa,
        kend - 1,
        arch::KIMAGE_VADDR
    );
    if let Some(c) = &info.console {
        let _ = writeln!(w, "  console: {:?} at {:#x} ({})", c.kind, c.base, c.path);
        if let Some(why) = &c.fallback_reason {
            let _ = writeln!(w, "  console fallback: {why}");
        }
        if let Some(ch) = UART_CLOCK.get() {
            let _ = match *ch {
                bootcfg::uart::ClockChoice::Firmware { divisor } => {
                    writeln!(w, "  console clock: the firmware's divisor {divisor} kept")
                }
                bootcfg::uart::ClockChoice::Mailbox { core_hz, divisor } => writeln!(
                    w,
                    "  console clock: core {core_hz} Hz from the mailbox, divisor {divisor}"
                ),
                bootcfg::uart::ClockChoice::Assumed { core_hz, divisor } => writeln!(
                    w,
                    "  console clock: no firmware setup, no mailbox answer: {core_hz} Hz assumed, divisor {divisor}"
                ),
            };
        }
    }
    let _ = writeln!(
        w,
        "  timer: {} Hz{}",
        arch::timer_hz(),
        if info.timer_freq.is_some() { " (from device tree)" } else { " (CNTFRQ_EL0)" }
    );
    if let Some(l) = info.dma_limit {
        let _ = writeln!(w, "  dma limit: {:#x}", l);
    }
    let _ = writeln!(w, "  bootargs: \"{}\"", bootargs);
    let _ = writeln!(
        w,
        "  switches: {}{}",
        cfg.mm_switches(),
        if arch::semihosting::present() { " (semihosting exit)" } else { "" }
    );
    if !cfg.ignored.is_empty() {
        let _ = writeln!(w, "  ignored boot parameters (not ours): {}", cfg.ignored.join(" "));
    }
}

/// Interrupts: the wake-up IPI and the tick registered, the GIC the device tree names set up on
/// this CPU (self-tested), the first tick armed, interrupts unmasked. Without a usable GIC the
/// kernel runs as before interrupts existed: no tick, idle CPUs wait in WFE.
fn irq_init(info: &dt::BootInfo, cfg: &config::Config) {
    arch::idle::init();
    let vtimer = info.vtimer_intid.unwrap_or(dt::DEFAULT_VTIMER_INTID);
    if let Err(e) = crate::tick::tick_init(vtimer, cfg.hz) {
        fatal(crate::EXIT_BAD_INPUT, format_args!("tick on INTID {vtimer}: {e}"));
    }
    arch::idle::set_nohz(cfg.nohz);
    let why = match &info.gic {
        None => Some("no interrupt controller in the device tree"),
        Some(g) => arch::gic::init(g, 0, arch::irq::enabled_mask(), &|pa, size| {
            mmu::early_ioremap(pa, size)
        })
        .err(),
    };
    if let Some(why) = why {
        println!("irq: none ({why}): no tick, idle CPUs wait in WFE");
        return;
    }
    let where_ = match &info.gic {
        Some(dt::Gic::V2 { gicd, gicc }) => format!("GICD {gicd:#x} GICC {gicc:#x}"),
        Some(dt::Gic::V3 { gicd, redist_regions, .. }) => {
            format!("GICD {gicd:#x}, {} redistributor region(s)", redist_regions.len())
        }
        None => String::new(),
    };
    match crate::tick::hz() {
        0 => println!("irq: {} ({where_}); no tick (hz=0); idle: WFI", arch::gic::name()),
        hz => println!(
            "irq: {} ({where_}); tick: {hz} Hz on the virtual timer (INTID {vtimer}), {}; idle: WFI",
            arch::gic::name(),
            if cfg.nohz { "stopped in idle (nohz)" } else { "periodic in idle (nohz=off)" }
        ),
    }
    arch::timer::program_next_tick();
    arch::local_irq_enable();
}

/// The kernel's own memory, so that growth shows in every boot log: the image (text, read-only
/// data, data, .bss with the boot heap and the per-CPU stacks, early tables, boot stack),
/// mem_map, the per-CPU areas, kernel page tables, and how much of the boot heap is in use.
fn kernel_memory(mm: &crate::mm::init::MmSummary) {
    unsafe extern "C" {
        static _text: u8;
        static _etext: u8;
        static _erodata: u8;
        static __bss_start: u8;
        static __bss_end: u8;
        static _end: u8;
    }
    let a = |s: *const u8| s as u64;
    let (text, etext, erodata, bss, ebss, end) = (
        a(&raw const _text),
        a(&raw const _etext),
        a(&raw const _erodata),
        a(&raw const __bss_start),
        a(&raw const __bss_end),
        a(&raw const _end),
    );
    let kib = |b: u64| b >> 10;
    let stacks = (mm_types::NR_CPUS * (crate::smp::STACK_SIZE + 4096)) as u64;
    let tables = (arch::mmu::early_pool_used() as u64 + crate::mm::pgtable::nr_pagetable_pages())
        * mm_types::PAGE_SIZE as u64;
    let heap_used = HEAP.lock().used() as u64;
    println!(
        "kernel memory: image {} KiB (text {}, rodata {}, data {}, bss {}: boot heap {}, {} CPU stacks {}; tables and boot stack {}), mem_map {} KiB, percpu {} KiB ({} x {}), page tables {} KiB, boot heap used {} KiB",
        kib(end - text),
        kib(etext - text),
        kib(erodata - etext),
        kib(bss - erodata),
        kib(ebss - bss),
        kib(HEAP_SIZE as u64),
        mm_types::NR_CPUS,
        kib(stacks),
        kib(end - ebss),
        kib(mm.mem_map_bytes),
        kib((mm.percpu.unit_size * mm.percpu.nr_units) as u64),
        mm.percpu.nr_units,
        kib(mm.percpu.unit_size as u64),
        kib(tables),
        kib(heap_used),
    );
}

fn boot_stack_guard() -> u64 {
    unsafe extern "C" {
        static __boot_stack_guard: u8;
    }
    (&raw const __boot_stack_guard) as u64
}

/// [bottom, top) of the boot CPU's stack (linker.ld).
fn boot_stack() -> (u64, u64) {
    unsafe extern "C" {
        static __boot_stack_bottom: u8;
        static __boot_stack_top: u8;
    }
    ((&raw const __boot_stack_bottom) as u64, (&raw const __boot_stack_top) as u64)
}

/// [start, end) physical range of the loaded image including bss, tables and the boot stack.
pub fn kernel_image_range(kimage_pa: u64) -> (u64, u64) {
    unsafe extern "C" {
        static _text: u8;
        static _end: u8;
    }
    let size = (&raw const _end) as u64 - (&raw const _text) as u64;
    (kimage_pa, kimage_pa + size)
}

/// Entry from boot/src/head.S on the boot CPU.
pub fn kmain(dtb_pa: u64, kimage_pa: u64) -> ! {
    arch::exception::install_vectors();
    arch::set_exit_hook(crate::console::on_exit);
    mmu::set_kimage_pa(kimage_pa);
    // SAFETY: HEAP_SPACE is a static used only as this heap's memory, handed over once on the boot
    // CPU before anything allocates.
    unsafe { HEAP.lock().init((&raw mut HEAP_SPACE) as *mut u8, HEAP_SIZE) };
    arch::semihosting::probe();

    let mut info = match dt::parse(dtb_slice(dtb_pa)) {
        Ok(i) => i,
        Err(e) => fatal(crate::EXIT_BAD_INPUT, format_args!("{} (DTB at {:#x})", e, dtb_pa)),
    };
    info.reserve_dtb(dtb_pa);
    arch::psci::set_conduit(info.psci);
    if let Some(hz) = info.timer_freq {
        arch::set_timer_hz(hz as u64);
    }
    if let Some(wdt) = info.watchdog {
        if let Some(va) = mmu::early_ioremap(wdt, 0x100) {
            crate::board::rpi4::set_watchdog(va);
        }
    }
    if let Err(e) = console_init(&info) {
        fatal(crate::EXIT_BAD_INPUT, format_args!("{e}"));
    }
    // The command line is refused whole (exit 2, naming the byte offset) when it is not UTF-8
    // or holds control characters: never dropped for defaults, never half applied.
    let (bootargs, cfg) = match config::parse_bootargs(&info.bootargs) {
        Ok(r) => r,
        Err(e) => fatal(crate::EXIT_BAD_INPUT, format_args!("{e}")),
    };
    crate::console::set_printk_time(cfg.printk_time);
    banner(&info, bootargs, &cfg, kimage_pa);
    config::set(cfg);
    let cfg = config::get();

    let possible =
        info.cpus.len().min(cfg.maxcpus.unwrap_or(mm_types::NR_CPUS)).clamp(1, mm_types::NR_CPUS);
    let kimage = kernel_image_range(kimage_pa);
    let mm = match crate::mm::init::mm_init(&info, kimage, possible, cfg.pcp) {
        Ok(s) => {
            println!(
                "mm: mem_map {} KiB for {} pages ({} bytes per struct page), {} early page tables",
                s.mem_map_bytes >> 10,
                s.nr_pages,
                core::mem::size_of::<mm_page_alloc::Page>(),
                s.early_tables
            );
            let p = &s.percpu;
            println!(
                "percpu: Embedded {} pages/cpu s{} d{} u{} x {} units at {:#x} (static section, first chunk, zone pcps)",
                p.unit_size / mm_types::PAGE_SIZE, p.static_size, p.dyn_size, p.unit_size, p.nr_units, p.base_pa
            );
            s
        }
        Err(e) => fatal(crate::EXIT_BAD_INPUT, format_args!("mm_init: {e}")),
    };
    // Per-CPU areas exist now: exception entries check the boot stack's bounds.
    let (lo, hi) = boot_stack();
    arch::exception::set_kernel_stack(lo, hi);
    crate::mm::init::show_mem(&mut crate::console::Console);
    // Guard pages below the boot stack and every per-CPU stack stay unmapped.
    let mut guards = alloc::vec![boot_stack_guard()];
    guards.extend((0..mm_types::NR_CPUS).map(|c| crate::smp::stack_range(c).0));
    if let Err(e) = crate::mm::pgtable::paging_init(&info, &guards) {
        fatal(crate::EXIT_PANIC, format_args!("{e}"));
    }
    kernel_memory(&mm);

    irq_init(&info, cfg);

    let online = crate::smp::bring_up(&info, cfg.maxcpus);
    print!("smp: {online} CPUs online:");
    for cpu in crate::smp::online_cpus() {
        print!(" cpu{cpu}(mpidr {:#x})", crate::smp::cpu_mpidr(cpu));
    }
    println!();
    crate::smp::on_each_cpu(&crate::mm::pgtable::cpu_drop_idmap);
    crate::mm::vmalloc::vmalloc_init();
    crate::mm::percpu::percpu_init();
    crate::smp::set_quiescent_hook(crate::tick::quiescent_work);

    match cfg.ktest_fault.as_deref() {
        Some("null") => {
            println!("ktest.fault=null: reading address 0");
            // SAFETY: a deliberate NULL read (ktest.fault=null): address 0 is unmapped (TTBR0
            // points at an empty table), so this faults into the exception report, which is what
            // the check expects; it never reads memory.
            let v = unsafe { core::ptr::read_volatile(core::ptr::null::<u64>()) };
            println!("read {v:#x}: no fault?!");
            arch::exit(crate::EXIT_TEST_FAILED);
        }
        Some("kfree") => {
            use crate::mm::kmalloc::{kfree, kmalloc};
            println!("ktest.fault=kfree: freeing a 64-byte kmalloc object twice");
            let p = kmalloc(64, mm_types::gfp::GfpFlags::GFP_KERNEL);
            // SAFETY: a deliberate double free (ktest.fault=kfree): `p` is a live 64-byte object
            // (or null: both calls return at once); the second kfree must stop in the
            // double-free report before it links the object again, which is what the check
            // expects.
            unsafe {
                kfree(p, 64);
                kfree(p, 64);
            }
            println!("second kfree of {p:p} returned: double free not detected");
            arch::exit(crate::EXIT_TEST_FAILED);
        }
        Some(_) => {
            println!("ktest.fault=stack: recursing until the stack runs out");
            let d = recurse(0);
            println!("recursion returned {d}: no fault?!");
            arch::exit(crate::EXIT_TEST_FAILED);
        }
        None => {}
    }

    if let Some(filter) = cfg.ktest.as_deref() {
        let (passed, failed) = crate::ktest::run(filter);
        println!("{passed} passed, {failed} failed");
        arch::exit(if failed == 0 { crate::EXIT_OK } else { crate::EXIT_TEST_FAILED });
    }
    if cfg.bench.is_some() {
        crate::bench::pagealloc::run();
        arch::exit(crate::EXIT_OK);
    }
    match crate::bench::test_vmalloc::run(&cfg.test_vmalloc) {
        Ok((passed, failed)) => {
            println!("{passed} passed, {failed} failed");
            arch::exit(if failed == 0 { crate::EXIT_OK } else { crate::EXIT_TEST_FAILED })
        }
        Err(e) => fatal(crate::EXIT_BAD_INPUT, format_args!("{e}")),
    }
}

/// Unbounded recursion with a 512-byte frame (ktest.fault=stack).
#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let mut buf = [0u8; 512];
    buf[depth as usize % 512] = depth as u8;
    let buf = core::hint::black_box(buf);
    recurse(depth + 1) + buf[(depth as usize + 1) % 512] as u64
}

/// Entry from head.S on a secondary CPU.
pub fn secondary_main(cpu: usize) -> ! {
    crate::smp::secondary_start(cpu)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let mut w = crate::console::EmergencyWriter;
    let _ = writeln!(
        w,
        "\n*** KERNEL PANIC on CPU {}: {}",
        crate::percpu_defs::smp_processor_id(),
        info
    );
    arch::exit(crate::EXIT_PANIC)
}
