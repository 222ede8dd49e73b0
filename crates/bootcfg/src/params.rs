//! Kernel command line (`/chosen/bootargs`) parsing with Linux's rules, so the same strings work
//! for a Linux boot and for this kernel (`test_vmalloc.nr_threads=4 mm.vfree=bulk`).
//!
//! Splitting follows `next_arg()` (lib/cmdline.c) as used by `parse_args()` (kernel/params.c);
//! key comparison follows `parameq()`; value parsing follows `kstrtoll()`/`kstrtoull()` with
//! base 0 (what `param_set_int()` & co. use) and `kstrtobool()`.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// One `key[=value]` argument; both borrow from the command line, quotes removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    pub key: &'a str,
    /// `None` for a bare `key`; `Some("")` for `key=`.
    pub value: Option<&'a str>,
}

impl<'a> Param<'a> {
    /// The part before the first '.', for module parameters (`test_vmalloc.nr_threads` ->
    /// `test_vmalloc`); `None` for plain kernel parameters.
    pub fn module(&self) -> Option<&'a str> {
        self.key.split_once('.').map(|(m, _)| m)
    }

    /// The parameter name without its module prefix (`nr_threads`).
    pub fn name(&self) -> &'a str {
        self.key.split_once('.').map_or(self.key, |(_, n)| n)
    }

    /// Whether the key is `key`, with '-' and '_' equivalent (Linux `parameq()`).
    pub fn is(&self, key: &str) -> bool {
        parameq(self.key, key)
    }

    pub fn int(&self) -> Result<i64, ParamError> {
        parse_int(self.key, self.value)
    }

    pub fn uint(&self) -> Result<u64, ParamError> {
        parse_uint(self.key, self.value)
    }

    pub fn bool(&self) -> Result<bool, ParamError> {
        parse_bool(self.key, self.value)
    }
}

/// Linux `parameq()`: equal up to '-' vs '_' (so `mm.vfree-mode` matches `mm.vfree_mode`).
pub fn parameq(a: &str, b: &str) -> bool {
    let norm = |c: u8| if c == b'-' { b'_' } else { c };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| norm(x) == norm(y))
}

/// C `isspace()` in the "C" locale.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Why a boot command line was refused as a whole (see [`cmdline`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdlineError {
    /// The bytes from `offset` on are not valid UTF-8; `byte` is the first offending byte.
    InvalidUtf8 { offset: usize, byte: u8 },
    /// A control character (C0, DEL or C1) that Linux's `next_arg()` would not treat as a
    /// separator, starting at byte `offset`. NUL is one too: a string property ends at its
    /// last byte, so a NUL before that means the command line was cut or is several strings.
    Control { offset: usize, ch: char },
}

impl CmdlineError {
    /// Byte offset of the offending byte in the command line (the bootargs property value).
    pub fn offset(&self) -> usize {
        match *self {
            CmdlineError::InvalidUtf8 { offset, .. } | CmdlineError::Control { offset, .. } => {
                offset
            }
        }
    }
}

impl fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("boot command line (/chosen/bootargs) refused: ")?;
        match *self {
            CmdlineError::InvalidUtf8 { offset, byte } => {
                write!(f, "byte {byte:#04x} at offset {offset} is not valid UTF-8")?
            }
            CmdlineError::Control { offset, ch } => write!(
                f,
                "control character U+{:04X} at byte offset {offset} (only space, tab, newline, \\v, \\f and \\r \
                 may separate parameters)",
                ch as u32
            )?,
        }
        f.write_str("; no parameter of it was applied")
    }
}

/// Linux `next_arg()`'s separators: C `isspace()` in the "C" locale.
pub fn is_separator(c: char) -> bool {
    c.is_ascii() && is_space(c as u8)
}

/// Checks a raw boot command line (the bytes of /chosen/bootargs without the terminating NUL)
/// before anything is parsed from it: it must be UTF-8 and hold no control character other
/// than the whitespace `next_arg()` splits on. Any other byte string is refused whole, with the
/// offset of the first bad byte, instead of being dropped or half-applied (with the rest of
/// the kernel then running on defaults nobody asked for).
pub fn cmdline(bytes: &[u8]) -> Result<&str, CmdlineError> {
    // The first bad byte is reported, whichever rule it breaks: controls are looked for in
    // the valid prefix before the UTF-8 error (if any) is.
    let (valid, bad_utf8) = match core::str::from_utf8(bytes) {
        Ok(s) => (s, None),
        Err(e) => {
            (core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""), Some(e.valid_up_to()))
        }
    };
    if let Some((offset, ch)) =
        valid.char_indices().find(|&(_, c)| c.is_control() && !is_separator(c))
    {
        return Err(CmdlineError::Control { offset, ch });
    }
    match bad_utf8 {
        Some(offset) => Err(CmdlineError::InvalidUtf8 { offset, byte: bytes[offset] }),
        None => Ok(valid),
    }
}

/// The bytes around `offset` for an error message: up to 24 on either side, printable ASCII
/// as is and everything else as `\xNN`, the byte at `offset` in brackets, quoted, with "..."
/// where the line goes on: `"...nr_threads=1 [\xff]"`.
pub fn excerpt(bytes: &[u8], offset: usize) -> String {
    use core::fmt::Write;
    let offset = offset.min(bytes.len());
    let (lo, hi) = (offset.saturating_sub(24), offset.saturating_add(25).min(bytes.len()));
    let mut s = String::from(if lo > 0 { "\"..." } else { "\"" });
    for (i, &b) in bytes[lo..hi].iter().enumerate() {
        let at = lo + i == offset;
        if at {
            s.push('[');
        }
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            s.push(b as char);
        } else {
            let _ = write!(s, "\\x{b:02x}");
        }
        if at {
            s.push(']');
        }
    }
    s.push_str(if hi < bytes.len() { "...\"" } else { "\"" });
    s
}

/// Splits a command line into parameters. Like `parse_args()`, a bare `--` ends the kernel's
/// part (Linux hands the rest to init), so nothing after it is returned.
pub fn split(bootargs: &str) -> Vec<Param<'_>> {
    let mut out = Vec::new();
    let mut rest = bootargs.trim_start_matches(|c: char| c.is_ascii() && is_space(c as u8));
    while !rest.is_empty() {
        let (p, next) = next_arg(rest);
        if p.key == "--" && p.value.is_none() {
            break;
        }
        out.push(p);
        rest = next;
    }
    out
}

/// The last occurrence of `key` (later ones override earlier ones, as in Linux).
pub fn lookup<'a>(bootargs: &'a str, key: &str) -> Option<Param<'a>> {
    split(bootargs).into_iter().rev().find(|p| p.is(key))
}

/// Linux `next_arg()`: a leading '"' quotes the whole argument, the first '=' splits key from
/// value, whitespace inside quotes is kept, and one pair of quotes is dropped from the value.
/// Only ASCII bytes are inspected, so every slice boundary is a char boundary.
fn next_arg(args: &str) -> (Param<'_>, &str) {
    let b = args.as_bytes();
    let quoted = b.first() == Some(&b'"');
    let start = quoted as usize;
    let (mut in_quote, mut equals, mut i) = (quoted, None, start);
    while i < b.len() {
        if is_space(b[i]) && !in_quote {
            break;
        }
        // As in C, '=' as the very first character does not count ("equals == 0").
        if equals.is_none() && b[i] == b'=' && i > start {
            equals = Some(i);
        }
        if b[i] == b'"' {
            in_quote = !in_quote;
        }
        i += 1;
    }
    let mut end = i; // exclusive end of this argument's text
    let ends_in_quote = end > start && b[end - 1] == b'"';
    let (key, value) = match equals {
        None => {
            if quoted && ends_in_quote {
                end -= 1;
            }
            (&args[start..end.max(start)], None)
        }
        Some(eq) => {
            let mut v = eq + 1;
            if b.get(v) == Some(&b'"') {
                v += 1;
                if ends_in_quote && end > v {
                    end -= 1;
                }
            } else if quoted && ends_in_quote {
                end -= 1;
            }
            (&args[start..eq], Some(&args[v..end.max(v)]))
        }
    };
    let rest = &args[(i + 1).min(args.len())..];
    (Param { key, value }, rest.trim_start_matches(|c: char| c.is_ascii() && is_space(c as u8)))
}

/// A parameter value that could not be used; names the parameter for the boot log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    pub key: String,
    pub value: Option<String>,
    /// What was expected, e.g. "not an integer".
    pub what: &'static str,
}

impl ParamError {
    fn new(key: &str, value: Option<&str>, what: &'static str) -> Self {
        ParamError { key: key.to_string(), value: value.map(|v| v.to_string()), what }
    }
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "bad value \"{v}\" for {}: {}", self.key, self.what),
            None => write!(f, "missing value for {}: {}", self.key, self.what),
        }
    }
}

/// `kstrtoull(s, 0)`: optional '+', then "0x"/"0X" + hex digits, a leading '0' for octal, or
/// decimal; one trailing newline allowed; no spaces, no overflow.
fn kstrtoull(s: &str) -> Result<u64, &'static str> {
    let s = s.strip_suffix('\n').unwrap_or(s);
    let s = s.strip_prefix('+').unwrap_or(s);
    let b = s.as_bytes();
    let (radix, digits) = match b {
        [b'0', x, h, ..] if x.eq_ignore_ascii_case(&b'x') && h.is_ascii_hexdigit() => (16, &s[2..]),
        [b'0', _, ..] => (8, &s[1..]),
        _ => (10, s),
    };
    if digits.is_empty() {
        return Err("not an integer");
    }
    digits.bytes().try_fold(0u64, |acc, c| {
        let d = (c as char).to_digit(radix).ok_or("not an integer")?;
        acc.checked_mul(radix as u64).and_then(|a| a.checked_add(d as u64)).ok_or("out of range")
    })
}

/// Signed integer with `kstrtoll()` semantics ("-12", "0x1f", "017" = 15).
pub fn parse_int(key: &str, value: Option<&str>) -> Result<i64, ParamError> {
    let err = |what| ParamError::new(key, value, what);
    let v = value.ok_or_else(|| err("expected an integer"))?;
    match v.strip_prefix('-') {
        Some(mag) if !mag.starts_with(['+', '-']) => {
            let m = kstrtoull(mag).map_err(err)?;
            0i64.checked_sub_unsigned(m).ok_or_else(|| err("out of range"))
        }
        Some(_) => Err(err("not an integer")),
        None => i64::try_from(kstrtoull(v).map_err(err)?).map_err(|_| err("out of range")),
    }
}

/// Unsigned integer with `kstrtoull()` semantics; a '-' sign is an error.
pub fn parse_uint(key: &str, value: Option<&str>) -> Result<u64, ParamError> {
    let v = value.ok_or_else(|| ParamError::new(key, value, "expected an unsigned integer"))?;
    kstrtoull(v).map_err(|what| {
        let what = if what == "not an integer" { "not an unsigned integer" } else { what };
        ParamError::new(key, value, what)
    })
}

/// Linux `kstrtobool()` as `param_set_bool()` uses it: a bare key means true; otherwise the
/// first character decides (y/Y/t/T/e/E/1 true, n/N/f/F/d/D/0 false), "on"/"off" by the second.
pub fn parse_bool(key: &str, value: Option<&str>) -> Result<bool, ParamError> {
    let Some(v) = value else { return Ok(true) };
    match v.as_bytes() {
        [b'y' | b'Y' | b't' | b'T' | b'e' | b'E' | b'1', ..] => Ok(true),
        [b'n' | b'N' | b'f' | b'F' | b'd' | b'D' | b'0', ..] => Ok(false),
        [b'o' | b'O', b'n' | b'N', ..] => Ok(true),
        [b'o' | b'O', b'f' | b'F', ..] => Ok(false),
        _ => Err(ParamError::new(key, value, "not a boolean (y/n, 1/0, on/off)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(s: &str) -> Vec<(&str, Option<&str>)> {
        split(s).iter().map(|p| (p.key, p.value)).collect()
    }

    #[test]
    fn splitting() {
        assert_eq!(
            kv("console=ttyAMA0 test_vmalloc.nr_threads=4 mm.vfree=bulk"),
            [
                ("console", Some("ttyAMA0")),
                ("test_vmalloc.nr_threads", Some("4")),
                ("mm.vfree", Some("bulk"))
            ]
        );
        assert_eq!(kv(""), []);
        assert_eq!(kv("  \t\n "), []);
        assert_eq!(
            kv("  quiet   debug\tx=\n"),
            [("quiet", None), ("debug", None), ("x", Some(""))]
        );
        assert_eq!(kv("a=b=c root=LABEL=x"), [("a", Some("b=c")), ("root", Some("LABEL=x"))]);
        assert_eq!(kv("=x"), [("=x", None)]);
        assert_eq!(kv("ünï=cödé x"), [("ünï", Some("cödé")), ("x", None)]);
    }

    #[test]
    fn cmdline_accepts_utf8_and_linux_whitespace() {
        assert_eq!(cmdline(b""), Ok(""));
        assert_eq!(cmdline(b"a=1\tb\nc\x0bd\x0ce\r f"), Ok("a=1\tb\nc\x0bd\x0ce\r f"));
        assert_eq!(cmdline("ünï=cödé €".as_bytes()), Ok("ünï=cödé €"));
    }

    #[test]
    fn cmdline_refuses_invalid_utf8_at_its_offset() {
        let e = cmdline(b"test_vmalloc.nr_threads=1 \xff").unwrap_err();
        assert_eq!(e, CmdlineError::InvalidUtf8 { offset: 26, byte: 0xff });
        assert_eq!(
            e.to_string(),
            "boot command line (/chosen/bootargs) refused: byte 0xff at offset 26 is not valid UTF-8; \
             no parameter of it was applied"
        );
        // A truncated multi-byte sequence, an overlong encoding, a lone continuation byte, a
        // UTF-16 surrogate: the offset is where the bad sequence starts.
        assert_eq!(
            cmdline(b"ab\xc3").unwrap_err(),
            CmdlineError::InvalidUtf8 { offset: 2, byte: 0xc3 }
        );
        assert_eq!(
            cmdline(b"x \xc0\x80").unwrap_err(),
            CmdlineError::InvalidUtf8 { offset: 2, byte: 0xc0 }
        );
        assert_eq!(
            cmdline(b"\x80").unwrap_err(),
            CmdlineError::InvalidUtf8 { offset: 0, byte: 0x80 }
        );
        assert_eq!(cmdline(b"k=\xed\xa0\x80").unwrap_err().offset(), 2);
        assert_eq!(cmdline("é\u{1}".as_bytes()).unwrap_err().offset(), 2);
    }

    #[test]
    fn cmdline_refuses_control_characters() {
        for (input, offset, ch) in [
            (&b"mm.vfree=bulk\x00mm.pcp=off"[..], 13, '\0'),
            (b"\x1b[31m", 0, '\u{1b}'),
            (b"a=b\x7f", 3, '\u{7f}'),
            (b"a \xc2\x85b", 2, '\u{85}'), // NEL: a C1 control, not a separator for next_arg()
            (b"x\x08", 1, '\u{8}'),
        ] {
            assert_eq!(cmdline(input), Err(CmdlineError::Control { offset, ch }), "{input:?}");
        }
        let e = cmdline(b"a\x01").unwrap_err().to_string();
        assert!(e.contains("control character U+0001 at byte offset 1"), "{e}");
        // The first bad byte wins, whatever its kind.
        assert_eq!(
            cmdline(b"\x01\xff").unwrap_err(),
            CmdlineError::Control { offset: 0, ch: '\u{1}' }
        );
        assert_eq!(
            cmdline(b"a\xff\x01").unwrap_err(),
            CmdlineError::InvalidUtf8 { offset: 1, byte: 0xff }
        );
        assert_eq!(cmdline(b"\x01 ok").unwrap_err().offset(), 0);
        // Non-ASCII whitespace is not a separator but is not refused either (it is not a control).
        assert_eq!(cmdline("a\u{a0}b".as_bytes()).map(|s| split(s).len()), Ok(1));
    }

    #[test]
    fn excerpts_escape_and_mark_the_bad_byte() {
        assert_eq!(
            excerpt(b"test_vmalloc.nr_threads=1 \xff", 26),
            r#""...st_vmalloc.nr_threads=1 [\xff]""#
        );
        assert_eq!(excerpt(b"a\x01b", 1), r#""a[\x01]b""#);
        assert_eq!(excerpt(b"x\\y\xc3", 3), r#""x\x5cy[\xc3]""#);
        let long = [b'a'; 100];
        assert_eq!(
            excerpt(&long, 50),
            format!("\"...{}[a]{}...\"", "a".repeat(24), "a".repeat(24))
        );
        assert_eq!(excerpt(b"", 0), r#""""#);
        assert_eq!(excerpt(b"ab", 7), r#""ab""#); // an offset past the end marks nothing
    }

    #[test]
    fn quoting() {
        assert_eq!(kv(r#"key="a b" c"#), [("key", Some("a b")), ("c", None)]);
        assert_eq!(kv(r#""key=a b" c"#), [("key", Some("a b")), ("c", None)]);
        assert_eq!(kv(r#""bare word""#), [("bare word", None)]);
        assert_eq!(kv(r#"k="" j"#), [("k", Some("")), ("j", None)]);
        assert_eq!(kv(r#"k="open ended"#), [("k", Some("open ended"))]);
        assert_eq!(kv(r#"k=a"b c"d e"#), [("k", Some(r#"a"b c"d"#)), ("e", None)]);
        assert_eq!(kv(r#"""#), [("", None)]);
    }

    #[test]
    fn double_dash_ends_kernel_args() {
        assert_eq!(kv("a -- init_arg b"), [("a", None)]);
        assert_eq!(kv("--=x"), [("--", Some("x"))]);
    }

    #[test]
    fn names_and_modules() {
        let p = split("test_vmalloc.nr_threads=4 quiet")[0];
        assert_eq!((p.module(), p.name()), (Some("test_vmalloc"), "nr_threads"));
        assert!(p.is("test-vmalloc.nr-threads"));
        assert!(!p.is("test_vmalloc.nr_thread"));
        let q = split("quiet")[0];
        assert_eq!((q.module(), q.name()), (None, "quiet"));
        assert_eq!(lookup("mm.vfree=a mm-vfree=b x", "mm_vfree").unwrap().value, Some("b"));
        assert_eq!(lookup("x", "y"), None);
    }

    #[test]
    fn integers() {
        let i = |v| parse_int("k", Some(v));
        assert_eq!(i("42"), Ok(42));
        assert_eq!(i("-42"), Ok(-42));
        assert_eq!(i("+7"), Ok(7));
        assert_eq!(i("0x1F"), Ok(31));
        assert_eq!(i("017"), Ok(15));
        assert_eq!(i("0"), Ok(0));
        assert_eq!(i("5\n"), Ok(5));
        assert_eq!(i("-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(i("9223372036854775808").unwrap_err().what, "out of range");
        for bad in ["", "abc", "0x", "08", "1 ", " 1", "--1", "-+1", "1k"] {
            assert_eq!(i(bad).unwrap_err().what, "not an integer", "{bad:?}");
        }
        assert_eq!(parse_uint("k", Some("18446744073709551615")), Ok(u64::MAX));
        assert_eq!(parse_uint("k", Some("18446744073709551616")).unwrap_err().what, "out of range");
        assert_eq!(parse_uint("k", Some("-1")).unwrap_err().what, "not an unsigned integer");
        let e = split("test_vmalloc.nr_threads=abc")[0].int().unwrap_err();
        assert_eq!(e.to_string(), r#"bad value "abc" for test_vmalloc.nr_threads: not an integer"#);
        let e = split("test_vmalloc.nr_threads")[0].uint().unwrap_err();
        assert_eq!(
            e.to_string(),
            "missing value for test_vmalloc.nr_threads: expected an unsigned integer"
        );
    }

    #[test]
    fn booleans() {
        let b = |v| parse_bool("k", Some(v));
        for t in ["y", "Y", "1", "on", "ON", "yes", "true", "enable"] {
            assert_eq!(b(t), Ok(true), "{t}");
        }
        for f in ["n", "N", "0", "off", "Off", "no", "false", "disable"] {
            assert_eq!(b(f), Ok(false), "{f}");
        }
        assert_eq!(parse_bool("k", None), Ok(true));
        let e = split("mm.debug=maybe")[0].bool().unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"bad value "maybe" for mm.debug: not a boolean (y/n, 1/0, on/off)"#
        );
        assert!(b("").is_err() && b("o").is_err());
    }
}
