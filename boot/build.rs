//! Passes the top-level linker script to the boot binary (never as a relative RUSTFLAGS path, so
//! builds from any directory work and edits to the script trigger a relink).
fn main() {
    let ld = concat!(env!("CARGO_MANIFEST_DIR"), "/../linker.ld");
    println!("cargo:rerun-if-changed={ld}");
    println!("cargo:rerun-if-changed=src/head.S");
    // The measured call graph of the hot paths (scripts/profile-tcg/layout.py, `make layout`):
    // lld places callers next to their callees, so calls stay within a 4 KiB page.
    let calls = concat!(env!("CARGO_MANIFEST_DIR"), "/hot-calls.txt");
    println!("cargo:rerun-if-changed={calls}");
    if std::env::var("TARGET")
        .map(|t| t.starts_with("aarch64") && t.ends_with("-none"))
        .unwrap_or(false)
    {
        println!("cargo:rustc-link-arg-bins=-T{ld}");
        println!("cargo:rustc-link-arg-bins=--gc-sections");
        if std::path::Path::new(calls).exists() {
            println!("cargo:rustc-link-arg-bins=--call-graph-ordering-file={calls}");
        }
    }
}
