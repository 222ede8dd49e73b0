//! Grouping samples into rows across logs.
use super::lex::uint;
use super::types::{ParsedLog, RowSpec, Summary};
use serde::Serialize;
use std::path::Path;

/// The row key used to group samples across logs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RowKey {
    pub name: String,
    pub p: Option<u64>,
    pub h: Option<u8>,
    pub l: Option<u64>,
    /// Extra distinguishing tag (e.g. `smp:4`), empty when none.
    pub tag: String,
}

impl RowKey {
    /// `fix_size_alloc_test: p:1, h:0, l:500000` (the seed's Result Class without the unit).
    pub fn label(&self) -> String {
        let mut s = self.name.clone();
        let mut parts = vec![];
        if let Some(p) = self.p {
            parts.push(format!("p:{p}"));
        }
        if let Some(h) = self.h {
            parts.push(format!("h:{h}"));
        }
        if let Some(l) = self.l {
            parts.push(format!("l:{l}"));
        }
        if !self.tag.is_empty() {
            parts.push(self.tag.clone());
        }
        if !parts.is_empty() {
            s.push_str(": ");
            s.push_str(&parts.join(", "));
        }
        s
    }

    /// Short label for the chart's x axis.
    pub fn short_label(&self) -> String {
        let mut s = self.name.strip_suffix("_test").unwrap_or(&self.name).to_string();
        if let (Some(p), Some(h)) = (self.p, self.h) {
            s.push_str(&format!(" p:{p} h:{h}"));
        }
        if !self.tag.is_empty() {
            s.push(' ');
            s.push_str(&self.tag);
        }
        s
    }

    pub fn from_row(r: &RowSpec, tag: &str) -> RowKey {
        RowKey {
            name: r.name.clone(),
            p: Some(r.p),
            h: Some(r.h),
            l: Some(r.l),
            tag: tag.to_string(),
        }
    }
}

/// Key of one Summary line: the row line if any, else test name + p/h/l from the params
/// header in force (module defaults for missing keys), else the test name alone.
pub fn row_key(log: &ParsedLog, s: &Summary, tag: &str) -> RowKey {
    if let Some(r) = &s.row {
        return RowKey::from_row(r, tag);
    }
    if let Some(pi) = s.params {
        let p = &log.params[pi];
        let nr_pages = p.get_u64("nr_pages").unwrap_or(0).max(1);
        let huge = p.get_bool("use_huge").unwrap_or(false) as u8;
        let loops = p.get_u64("test_loop_count").unwrap_or(1_000_000).max(1);
        return RowKey {
            name: s.name.clone(),
            p: Some(nr_pages),
            h: Some(huge),
            l: Some(loops),
            tag: tag.to_string(),
        };
    }
    RowKey { name: s.name.clone(), p: None, h: None, l: None, tag: tag.to_string() }
}

/// Tag derived from a log's path: a parent directory named `*-smp<N>` gives `smp:N`.
pub fn tag_from_path(path: &Path) -> String {
    if let Some(dir) = path.parent().and_then(|d| d.file_name()).and_then(|d| d.to_str()) {
        if let Some((_, n)) = dir.rsplit_once("-smp") {
            if uint(n).is_some() {
                return format!("smp:{n}");
            }
        }
    }
    String::new()
}
