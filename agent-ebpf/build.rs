use which::which;

/// Building this crate has an undeclared dependency on the `bpf-linker` binary.
/// Rebuild when it changes (for example after `cargo xtask setup` rebuilt it).
fn main() {
    let bpf_linker = which("bpf-linker")
        .expect("bpf-linker not found on PATH; run `cargo xtask setup` to install it");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
