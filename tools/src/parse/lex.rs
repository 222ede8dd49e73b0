//! Token helpers shared by the parsers.

pub(crate) fn ident(s: &str) -> Option<&str> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Some(s)
    } else {
        None
    }
}

pub(crate) fn uint(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

pub(crate) fn field_u64(tok: &str, prefix: &str) -> Result<u64, String> {
    let v =
        tok.strip_prefix(prefix).ok_or_else(|| format!("expected `{prefix}<n>`, got {tok:?}"))?;
    uint(v).ok_or_else(|| format!("`{prefix}` wants an unsigned integer, got {v:?}"))
}

pub(crate) fn hex(s: &str) -> Option<u64> {
    let h = s.strip_prefix("0x")?;
    if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(h, 16).ok()
}
