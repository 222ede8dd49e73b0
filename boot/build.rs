//! Passes the top-level linker script to the boot binary (never as a relative RUSTFLAGS path, so
//! builds from any directory work and edits to the script trigger a relink).
fn main() {
    let ld = concat!(env!("CARGO_MANIFEST_DIR"), "/../linker.ld");
    println!("cargo:rerun-if-changed={ld}");
    println!("cargo:rerun-if-changed=src/head.S");
    // The measured hot-code order (scripts/profile-tcg/layout.py, `make layout`): lld places
    // the hot functions first, at page offsets that keep the hot paths' branches and calls
    // within a 4 KiB page.
    let order = concat!(env!("CARGO_MANIFEST_DIR"), "/hot-order.txt");
    println!("cargo:rerun-if-changed={order}");
    if std::env::var("TARGET")
        .map(|t| t.starts_with("aarch64") && t.ends_with("-none"))
        .unwrap_or(false)
    {
        println!("cargo:rustc-link-arg-bins=-T{ld}");
        println!("cargo:rustc-link-arg-bins=--gc-sections");
        if std::path::Path::new(order).exists() {
            println!("cargo:rustc-link-arg-bins=--symbol-ordering-file={order}");
            // A stale name is what `layout.py check` (make test) reports; lld need not repeat it.
            println!("cargo:rustc-link-arg-bins=--no-warn-symbol-ordering");
        }
    }
}
