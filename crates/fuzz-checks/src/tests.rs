//! Replays the committed corpus (fuzz/corpus/<target>/*) through the targets' checks, plus the
//! generated device trees of $DT_FIXTURES when set (`make test` sets it): the QEMU virt and
//! raspi4b blobs and the upstream Pi 4 DTB, which are not committed (size, licence).
use std::path::{Path, PathBuf};
use std::string::String;
use std::vec::Vec;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

/// Runs `f` on every file of the target's corpus; at least `min` files must be there, so a
/// corpus that went missing fails instead of passing vacuously.
fn replay(target: &str, min: usize) {
    let f = super::TARGETS.iter().find(|(n, _)| *n == target).unwrap().1;
    let list = files(&corpus_dir(target));
    assert!(
        list.len() >= min,
        "fuzz/corpus/{target} has {} files, expected at least {min}",
        list.len()
    );
    for p in &list {
        let data = std::fs::read(p).unwrap();
        // The name is printed first so that a failing input is named in the test output.
        std::eprintln!("replay {target}: {}", p.display());
        f(&data);
    }
}

#[test]
fn corpus_replay_dt() {
    replay("dt", 10);
    if let Some(dir) = std::env::var_os("DT_FIXTURES") {
        for p in
            files(Path::new(&dir)).into_iter().filter(|p| p.extension().is_some_and(|e| e == "dtb"))
        {
            std::eprintln!("replay dt: {}", p.display());
            super::dt(&std::fs::read(&p).unwrap());
        }
    }
}

#[test]
fn corpus_replay_cmdline() {
    replay("cmdline", 10);
}

#[test]
fn corpus_replay_page_alloc() {
    replay("page_alloc", 5);
}

#[test]
fn corpus_replay_kva() {
    replay("kva", 5);
}

#[test]
fn every_target_has_a_corpus_and_a_fuzz_binary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    for (name, _) in super::TARGETS {
        assert!(corpus_dir(name).is_dir(), "fuzz/corpus/{name} missing");
        let src = root.join("fuzz_targets").join(format!("{name}.rs"));
        let text =
            std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        assert!(
            text.contains(&format!("fuzz_checks::{name}(")),
            "{} does not call the shared check",
            src.display()
        );
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
    }
}

/// The reference UTF-8 decoder of the cmdline target agrees with the byte check (and so with
/// the standard library) on every 1- and 2-byte string and on 3-byte strings around every
/// lead byte: the target's verdict comparison is meaningful.
#[test]
fn cmdline_reference_agrees_on_short_strings() {
    for a in 0..=255u8 {
        super::cmdline(&[a]);
        for b in 0..=255u8 {
            super::cmdline(&[a, b]);
            for c in [0x00u8, 0x20, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xff] {
                super::cmdline(&[a, b, c]);
            }
        }
    }
}

/// The dt target's BootInfo rules fire on what they claim to catch.
#[test]
fn dt_checks_refuse_unusable_boot_info() {
    use bootcfg::dt::{Board, BootInfo, MemRange, Reserved, ReservedKind};
    use std::panic::catch_unwind;
    let good = BootInfo {
        model: "m".into(),
        board: Board::Unknown,
        memory: std::vec![
            MemRange { base: 0x4000_0000, size: 0x1000 },
            MemRange { base: 0x5000_0000, size: 0x1000 }
        ],
        reserved: std::vec![Reserved {
            base: 0x4000_0000,
            size: 0x1000,
            kind: ReservedKind::MemReserve
        }],
        dynamic_reserved: Vec::new(),
        cpus: Vec::new(),
        psci: None,
        timer_freq: None,
        console: None,
        dma_limit: None,
        watchdog: None,
        gpio: None,
        aux: None,
        mbox: None,
        gic: None,
        vtimer_intid: None,
        bootargs: b"mm.vfree=single".to_vec(),
        stdout_path: String::new(),
        dtb_size: 64,
    };
    let blob = [0u8; 64];
    super::dt::check_info(&blob, &good);
    let bad: [fn(&mut BootInfo); 5] = [
        |i| i.memory[1].base = 0x4000_1000, // adjacent, not merged
        |i| i.memory.reverse(),             // unsorted
        |i| i.reserved[0] = Reserved { base: u64::MAX - 1, size: 4, kind: ReservedKind::Dtb }, // wraps
        |i| i.dtb_size = 65, // past the buffer
        |i| i.bootargs = b"a\xff".to_vec(),
    ];
    for (n, f) in bad.iter().enumerate().take(4) {
        let mut i = good.clone();
        f(&mut i);
        assert!(
            catch_unwind(|| super::dt::check_info(&blob, &i)).is_err(),
            "rule {n} did not fire"
        );
    }
    // Bad bootargs are not a dt finding (the boot refuses them): the check passes.
    let mut i = good.clone();
    bad[4](&mut i);
    super::dt::check_info(&blob, &i);
}

/// Operation sequences of every length decode and run (the zero-padded tail included), on
/// every machine layout / configuration byte.
#[test]
fn op_sequences_of_any_length_run() {
    for conf in 0..=255u8 {
        let v: Vec<u8> = core::iter::once(conf)
            .chain((0..(conf as usize % 48)).map(|i| (i * 37 + 11) as u8))
            .collect();
        super::page_alloc(&v);
        super::kva(&v);
    }
}
