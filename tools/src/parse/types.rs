//! What a parsed log holds: the records of the grammar in the parent module.
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

use super::lex::{field_u64, ident};

/// Tests whose failure is expected (xfail in newest Linux). Used only for logs whose
/// Summary lines predate the `xfailed:` field.
pub const XFAIL_TESTS: &[&str] = &["align_shift_alloc_test", "no_block_alloc_test"];

/// Linux's test array, in index (= run_test_mask bit) order.
pub const TESTS: &[&str] = &[
    "fix_size_alloc_test",
    "full_fit_alloc_test",
    "long_busy_list_alloc_test",
    "random_size_alloc_test",
    "fix_align_alloc_test",
    "random_size_align_alloc_test",
    "align_shift_alloc_test",
    "pcpu_alloc_test",
    "kvfree_rcu_1_arg_vmalloc_test",
    "kvfree_rcu_2_arg_vmalloc_test",
    "vm_map_ram_test",
    "no_block_alloc_test",
    "vrealloc_test",
];

pub fn test_index(name: &str) -> Option<usize> {
    TESTS.iter().position(|t| *t == name)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub file: String,
    /// 1-based line number; 0 when the error is about the whole log.
    pub line: usize,
    pub msg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file, self.line, self.msg)
        } else {
            write!(f, "{}: {}", self.file, self.msg)
        }
    }
}

impl std::error::Error for ParseError {}

/// A row declaration: which seed-table row the following Summary lines belong to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RowSpec {
    pub name: String,
    pub p: u64,
    pub h: u8,
    pub l: u64,
}

impl RowSpec {
    /// Parses `<name> p:<u> h:<0|1> l:<u>` (the text after `row `).
    pub fn parse(s: &str) -> Result<RowSpec, String> {
        let toks: Vec<&str> = s.split(' ').collect();
        if toks.len() != 4 {
            return Err(format!(
                "expected `<test_name> p:<n> h:<0|1> l:<loops>`, got {} fields",
                toks.len()
            ));
        }
        let name = ident(toks[0]).ok_or_else(|| format!("bad test name {:?}", toks[0]))?;
        let p = field_u64(toks[1], "p:")?;
        let h = field_u64(toks[2], "h:")?;
        if h > 1 {
            return Err(format!("h must be 0 or 1, got {h}"));
        }
        let l = field_u64(toks[3], "l:")?;
        Ok(RowSpec { name: name.to_string(), p, h: h as u8, l })
    }

    pub fn slug(&self) -> String {
        format!("{}-p{}-h{}-l{}", self.name, self.p, self.h, self.l)
    }
}

impl fmt::Display for RowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} p:{} h:{} l:{}", self.name, self.p, self.h, self.l)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub line: usize,
    pub name: String,
    pub passed: u64,
    pub failed: u64,
    /// None for kernels that predate the xfail change.
    pub xfailed: Option<u64>,
    pub repeat: u64,
    pub loops: u64,
    pub avg_usec: u64,
    /// Worker index from the `All test took worker<i>` line that closes this group.
    pub worker: Option<u64>,
    /// Row in force (kernel `row` line, else a `HOST: row` line).
    pub row: Option<RowSpec>,
    /// Index into `ParsedLog::params` of the header in force, if any.
    pub params: Option<usize>,
    /// Mean of the `test_vmalloc: setup` lines of this test in this row (usec per repeat).
    pub setup_usec: Option<f64>,
    /// `loop_scale` of the params header in force.
    pub loop_scale: Option<f64>,
}

impl Summary {
    /// True when the value is adjusted for the setup part (setup line and loop_scale present).
    pub fn setup_scaled(&self) -> bool {
        self.setup_usec.is_some() && self.loop_scale.is_some()
    }

    /// The row value in usec: `avg`, or with a setup line and a loop_scale
    /// `avg - setup + setup x loop_scale` (= loop_scale x the avg of the full-length test).
    pub fn value(&self) -> f64 {
        match (self.setup_usec, self.loop_scale) {
            (Some(su), Some(ls)) => self.avg_usec as f64 - su + su * ls,
            _ => self.avg_usec as f64,
        }
    }

    /// True when this line reports a failure that is not an expected one.
    pub fn unexpected_failure(&self) -> bool {
        match self.xfailed {
            Some(_) => self.failed > 0,
            None => self.failed > 0 && !XFAIL_TESTS.contains(&self.name.as_str()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerTotal {
    pub line: usize,
    /// "worker" (v6+) or "CPU" (v5.x).
    pub label: String,
    pub index: u64,
    pub cycles: u64,
    pub row: Option<RowSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Leak {
    pub line: usize,
    pub name: String,
    pub free_pages_before: u64,
    pub free_pages_after: u64,
    pub free_va_before: u64,
    pub free_va_after: u64,
    /// false when the line says LOST.
    pub ok: bool,
    pub row: Option<RowSpec>,
}

/// `test_vmalloc: setup <name> usec: <u>`: the setup+teardown time of a test outside its
/// timed loop (usec per repeat, the unit of Summary avg).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Setup {
    pub line: usize,
    pub name: String,
    pub usec: u64,
    pub row: Option<RowSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Params {
    pub line: usize,
    /// "kernel" (`test_vmalloc: params`) or "anchor" (`ANCHOR: load ... tvload`).
    pub source: String,
    pub map: BTreeMap<String, String>,
    /// Keys in line order (for display).
    #[serde(skip)]
    pub order: Vec<String>,
}

impl Params {
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.map.get(key).and_then(|v| v.parse().ok())
    }
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.map.get(key).and_then(|v| parse_bool(v))
    }
    /// `loop_scale` (the kernel prints `loop_scale=0.010000`); None when absent.
    pub fn loop_scale(&self) -> Option<f64> {
        self.map.get("loop_scale").and_then(|v| v.parse().ok())
    }
    /// `key=value ...` in line order.
    pub fn line_text(&self) -> String {
        let keys: Vec<&String> = if self.order.is_empty() {
            self.map.keys().collect()
        } else {
            self.order.iter().collect()
        };
        keys.iter().map(|k| format!("{k}={}", self.map[*k])).collect::<Vec<_>>().join(" ")
    }
    /// The kernel's `mm.*` switches in line order (the variant's name in `summary`).
    pub fn mm_switches(&self) -> Vec<String> {
        let keys: Vec<&String> = if self.order.is_empty() {
            self.map.keys().collect()
        } else {
            self.order.iter().collect()
        };
        keys.iter()
            .filter(|k| k.starts_with("mm."))
            .map(|k| format!("{k}={}", self.map[*k]))
            .collect()
    }
}

pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "Y" | "y" | "true" | "on" | "yes" => Some(true),
        "0" | "N" | "n" | "false" | "off" | "no" => Some(false),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostTrailer {
    pub line: usize,
    pub rc: i64,
    pub wall_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Totals {
    pub line: usize,
    pub passed: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParsedLog {
    pub file: String,
    pub rows: Vec<(usize, RowSpec)>,
    pub host_row: Option<RowSpec>,
    pub params: Vec<Params>,
    pub summaries: Vec<Summary>,
    pub workers: Vec<WorkerTotal>,
    pub leaks: Vec<Leak>,
    pub setups: Vec<Setup>,
    pub totals: Option<Totals>,
    pub host: Option<HostTrailer>,
    /// Problems found by `parse_log_lenient` (always empty from `parse_log`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl ParsedLog {
    /// True when any params header says icount=1.
    pub fn icount(&self) -> bool {
        self.params.iter().any(|p| p.get_bool("icount") == Some(true))
    }
}
