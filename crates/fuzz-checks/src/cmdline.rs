//! The `cmdline` target: arbitrary bytes as /chosen/bootargs through everything that reads the
//! boot command line — [`params::cmdline`] (the byte check), [`params::split`] / [`params::lookup`],
//! the integer and boolean parsers, [`Config::parse`] and the benchmark's [`TvParams::parse`] —
//! checked against independent references and for round trips: a parsed parameter list, value,
//! configuration or benchmark parameter set, written back out, parses to the same thing.
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use bootcfg::config::{parse_bootargs, Config, VfreeMode};
use bootcfg::params::{self, CmdlineError, Param};
use bootcfg::test_vmalloc::{Suite, TvParams};

/// An independent UTF-8 decoder (Unicode table 3-7, well-formed byte sequences): the char at
/// `b[i..]` and its length, or None if the bytes there are not a well-formed sequence.
fn decode_utf8(b: &[u8], i: usize) -> Option<(char, usize)> {
    let c0 = b[i];
    let cont = |k: usize, lo: u8, hi: u8| b.get(i + k).copied().filter(|c| (lo..=hi).contains(c));
    let (len, lo1, hi1) = match c0 {
        0x00..=0x7f => return Some((c0 as char, 1)),
        0xc2..=0xdf => (2, 0x80, 0xbf),
        0xe0 => (3, 0xa0, 0xbf),
        0xe1..=0xec | 0xee..=0xef => (3, 0x80, 0xbf),
        0xed => (3, 0x80, 0x9f),
        0xf0 => (4, 0x90, 0xbf),
        0xf1..=0xf3 => (4, 0x80, 0xbf),
        0xf4 => (4, 0x80, 0x8f),
        _ => return None,
    };
    let mut v = (c0 as u32) & (0x7f >> len);
    v = (v << 6) | (cont(1, lo1, hi1)? as u32 & 0x3f);
    for k in 2..len {
        v = (v << 6) | (cont(k, 0x80, 0xbf)? as u32 & 0x3f);
    }
    Some((char::from_u32(v)?, len))
}

/// The reference verdict: offset and kind of the first byte the boot must refuse.
fn first_bad(b: &[u8]) -> Option<CmdlineError> {
    let mut i = 0;
    while i < b.len() {
        match decode_utf8(b, i) {
            None => return Some(CmdlineError::InvalidUtf8 { offset: i, byte: b[i] }),
            Some((c, n)) => {
                let separator = matches!(c, ' ' | '\t' | '\n' | '\u{b}' | '\u{c}' | '\r');
                let control = (c as u32) < 0x20 || (0x7f..=0x9f).contains(&(c as u32));
                if control && !separator {
                    return Some(CmdlineError::Control { offset: i, ch: c });
                }
                i += n;
            }
        }
    }
    None
}

/// A parameter written so that `next_arg()` reads it back unchanged: always quoted, so
/// whitespace inside survives. Only for keys and values without '"' (the command line has no
/// escape for a quote).
fn render(p: &Param) -> Option<String> {
    if p.key.contains('"') || p.value.is_some_and(|v| v.contains('"')) {
        return None;
    }
    Some(match p.value {
        None => format!("\"{}\"", p.key),
        Some(v) => format!("\"{}={}\"", p.key, v),
    })
}

fn is_sub(s: &str, part: &str) -> bool {
    let (a, b) = (s.as_ptr() as usize, part.as_ptr() as usize);
    b >= a && b + part.len() <= a + s.len()
}

/// Integer and boolean values: what parses re-parses to the same value in every notation, and
/// plain decimal/hex agree with the standard library.
fn check_values(key: &str, v: &str) {
    if let Ok(n) = params::parse_int(key, Some(v)) {
        assert_eq!(params::parse_int(key, Some(&n.to_string())), Ok(n), "int {v:?}");
        if n >= 0 {
            assert_eq!(params::parse_int(key, Some(&format!("{n:#x}"))), Ok(n), "int {v:?} as hex");
        } else {
            assert_eq!(
                params::parse_int(
                    key,
                    Some(&format!("-{:#o}", n.unsigned_abs()).replace("0o", "0"))
                ),
                Ok(n),
                "int {v:?} as octal"
            );
        }
    }
    let u = params::parse_uint(key, Some(v));
    if let Ok(n) = u {
        for s in
            [n.to_string(), format!("{n:#X}"), format!("0{n:o}"), format!("+{n}"), format!("{n}\n")]
        {
            assert_eq!(params::parse_uint(key, Some(&s)), Ok(n), "uint {v:?} as {s:?}");
        }
        assert_eq!(
            params::parse_int(key, Some(v)).ok(),
            i64::try_from(n).ok(),
            "int and uint disagree on {v:?}"
        );
    }
    let digits = v.strip_prefix('+').unwrap_or(v);
    if !digits.is_empty()
        && digits.bytes().all(|c| c.is_ascii_digit())
        && (!digits.starts_with('0') || digits == "0")
    {
        assert_eq!(u.as_ref().ok(), digits.parse::<u64>().ok().as_ref(), "decimal {v:?}");
    }
    if let Some(h) = digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        if !h.is_empty() && h.bytes().all(|c| c.is_ascii_hexdigit()) {
            assert_eq!(u.as_ref().ok(), u64::from_str_radix(h, 16).ok().as_ref(), "hex {v:?}");
        }
    }
    if let Ok(b) = params::parse_bool(key, Some(v)) {
        for s in if b { ["y", "1", "on"] } else { ["n", "0", "off"] } {
            assert_eq!(params::parse_bool(key, Some(s)), Ok(b), "bool {v:?}");
        }
        let first = v.as_bytes()[0].to_ascii_lowercase();
        assert!(b"ytend01fo".contains(&first), "bool {v:?} accepted");
    }
}

/// A configuration written back as a command line (None if a string in it holds a '"').
fn render_config(c: &Config) -> Option<String> {
    let mut out = Vec::from([c.mm_switches()]);
    if let Some(n) = c.maxcpus {
        out.push(format!("maxcpus={n}"));
    }
    match c.ktest.as_deref() {
        Some("") => out.push("ktest".into()),
        Some(f) => out.push(format!("\"ktest={f}\"")),
        None => {}
    }
    if let Some(f) = &c.ktest_fault {
        out.push(format!("ktest.fault={f}"));
    }
    if let Some(b) = &c.bench {
        out.push(format!("bench={b}"));
    }
    for (k, v) in &c.test_vmalloc {
        out.push(match v {
            Some(v) => format!("\"test_vmalloc.{k}={v}\""),
            None => format!("\"test_vmalloc.{k}\""),
        });
    }
    for k in &c.ignored {
        // With a value, so that a key "__" (from "--=x") does not end the kernel's part; the
        // empty key (from `""`) has none, as `"="` would read as the key "=".
        out.push(if k.is_empty() { "\"\"".into() } else { format!("\"{k}=\"") });
    }
    let s = out.join(" ");
    (!c.ignored.iter().chain(c.test_vmalloc.iter().map(|(k, _)| k)).any(|k| k.contains('"'))
        && !c.test_vmalloc.iter().any(|(_, v)| v.as_deref().is_some_and(|v| v.contains('"')))
        && !c.ktest.as_deref().is_some_and(|v| v.contains('"')))
    .then_some(s)
}

/// Config::parse agrees with params::lookup (the last occurrence of a key wins) and split.
fn check_config_against_lookup(s: &str, c: &Config) {
    let last = |k: &str| params::lookup(s, k).map(|p| p.value);
    let want_vfree = match last("mm.vfree") {
        None => VfreeMode::Bulk,
        Some(Some("single")) => VfreeMode::Single,
        Some(Some("bulk")) => VfreeMode::Bulk,
        Some(v) => panic!("Config accepted mm.vfree={v:?}"),
    };
    assert_eq!(c.vfree, want_vfree, "mm.vfree of {s:?}");
    let on = |k: &str, default: bool| match last(k) {
        None => default,
        Some(Some("on" | "1" | "y" | "yes" | "true")) => true,
        Some(Some("off" | "0" | "n" | "no" | "false")) => false,
        Some(v) => panic!("Config accepted {k}={v:?}"),
    };
    assert_eq!(c.vmalloc_large_order, on("mm.vmalloc_large_order", true), "{s:?}");
    assert_eq!(c.pcp, on("mm.pcp", true), "{s:?}");
    assert_eq!(c.maxcpus, last("maxcpus").map(|v| v.unwrap().parse::<usize>().unwrap()), "{s:?}");
    assert!(c.maxcpus != Some(0));
    assert_eq!(c.ktest.as_deref(), last("ktest").map(|v| v.unwrap_or("")), "{s:?}");
    assert_eq!(c.ktest_fault.as_deref(), last("ktest.fault").map(|v| v.unwrap()), "{s:?}");
    assert_eq!(c.bench.as_deref(), last("bench").map(|v| v.unwrap()), "{s:?}");
    let norm = |k: &str| k.replace('-', "_");
    let tv: Vec<(String, Option<String>)> = params::split(s)
        .iter()
        .filter_map(|p| {
            norm(p.key)
                .strip_prefix("test_vmalloc.")
                .map(|n| (n.to_string(), p.value.map(String::from)))
        })
        .collect();
    assert_eq!(c.test_vmalloc, tv, "test_vmalloc pairs of {s:?}");
    for k in &c.ignored {
        for ns in ["mm.", "ktest.", "kernel.", "bench.", "test_vmalloc."] {
            assert!(!k.starts_with(ns), "{k} in our namespace {ns} ignored");
        }
        assert!(!["mm.vfree", "maxcpus", "ktest", "bench"].contains(&k.as_str()));
    }
}

/// TvParams written back as pairs parses to the same parameters.
fn check_tv_round_trip(p: &TvParams, cpus: u32) {
    let kv = |k: &str, v: String| (k.to_string(), Some(v));
    let mut pairs = Vec::from([
        kv("nr_threads", p.nr_threads.to_string()),
        kv("sequential_test_order", (p.sequential_test_order as u8).to_string()),
        kv("test_repeat_count", p.test_repeat_count.to_string()),
        kv("test_loop_count", format!("{:#x}", p.test_loop_count)),
        kv("nr_pages", p.nr_pages.to_string()),
        kv("use_huge", if p.use_huge { "on".into() } else { "off".into() }),
        kv("run_test_mask", p.run_test_mask.to_string()),
        kv("nr_pcpu_objects", p.nr_pcpu_objects.to_string()),
        kv(
            "loop_scale",
            format!("{}.{:06}", p.loop_scale_ppm / 1_000_000, p.loop_scale_ppm % 1_000_000),
        ),
        kv("seed", p.seed.to_string()),
        kv("rows", if p.warm_rows { "warm".into() } else { "cold".into() }),
    ]);
    match p.suite {
        Some(Suite::Seed) => pairs.push(kv("suite", "seed".into())),
        Some(Suite::Stress) => pairs.push(kv("suite", "stress".into())),
        None => {}
    }
    assert_eq!(TvParams::parse(&pairs, cpus).as_ref(), Ok(p), "TvParams round trip via {pairs:?}");
    assert!(
        p.nr_threads >= 1 && p.test_repeat_count >= 1 && p.test_loop_count >= 1 && p.nr_pages >= 1
    );
    assert!(p.loop_scale_ppm >= 1 && p.loop_scale_ppm <= 1_000_000_000 && p.scaled(1) >= 1);
}

/// Checks one command line given as raw bytes (also used on the dt target's bootargs).
pub fn check(data: &[u8]) {
    let verdict = params::cmdline(data);
    assert_eq!(verdict.err(), first_bad(data), "byte check of {data:x?}");
    let whole = parse_bootargs(data);
    let s = match verdict {
        Err(e) => {
            let msg = whole.expect_err("parse_bootargs accepted a refused line");
            assert!(msg.contains(&format!("offset {}", e.offset())), "{msg}");
            assert!(!params::excerpt(data, e.offset()).is_empty());
            return;
        }
        Ok(s) => s,
    };
    assert_eq!(s.as_bytes(), data);

    let ps = params::split(s);
    for p in &ps {
        assert!(
            is_sub(s, p.key) && p.value.is_none_or(|v| is_sub(s, v)),
            "{p:?} does not borrow from the line"
        );
        assert!(!(p.key == "--" && p.value.is_none()), "split returned the end marker");
        if p.value.is_none() && !p.key.contains('"') {
            assert!(
                !p.key.contains('=') || p.key.starts_with('='),
                "bare key {:?} holds '='",
                p.key
            );
        }
        if let Some(v) = p.value {
            check_values(p.key, v);
        }
    }
    // Each argument is parsed on its own, so the quote-free ones written back read the same.
    let sep = [" ", "\t", "\n", "  \r\n"][data.len() % 4];
    let clean: Vec<Param> = ps.iter().copied().filter(|p| render(p).is_some()).collect();
    let text: Vec<String> = clean.iter().filter_map(render).collect();
    let again = text.join(sep);
    assert_eq!(params::split(&again), clean, "round trip through {again:?}");
    // The last occurrence wins, with '-' and '_' equal.
    for p in &ps {
        let last = ps.iter().rev().find(|q| params::parameq(q.key, p.key)).unwrap();
        assert_eq!(params::lookup(s, &p.key.replace('_', "-")), Some(*last));
    }

    match Config::parse(s) {
        Ok(c) => {
            assert_eq!(whole.as_ref().map(|(_, c2)| c2), Ok(&c));
            check_config_against_lookup(s, &c);
            if let Some(r) = render_config(&c) {
                assert_eq!(Config::parse(&r).as_ref(), Ok(&c), "Config round trip via {r:?}");
            }
            let cpus = 1 + data.len() as u32 % 8;
            match TvParams::parse(&c.test_vmalloc, cpus) {
                Ok(p) => check_tv_round_trip(&p, cpus),
                Err(e) => assert!(e.contains("test_vmalloc."), "error names no parameter: {e}"),
            }
        }
        Err(e) => {
            assert!(!e.is_empty());
            assert_eq!(whole.err(), Some(e));
        }
    }
}
