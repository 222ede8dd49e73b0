//! Passes the top-level linker script to the boot binary (never as a relative RUSTFLAGS path, so
//! builds from any directory work and edits to the script trigger a relink).
fn main() {
    let ld = concat!(env!("CARGO_MANIFEST_DIR"), "/../linker.ld");
    println!("cargo:rerun-if-changed={ld}");
    println!("cargo:rerun-if-changed=src/head.S");
    if std::env::var("TARGET")
        .map(|t| t.starts_with("aarch64") && t.ends_with("-none"))
        .unwrap_or(false)
    {
        println!("cargo:rustc-link-arg-bins=-T{ld}");
        println!("cargo:rustc-link-arg-bins=--gc-sections");
    }
}
