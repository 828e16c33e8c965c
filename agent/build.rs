use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Builds the kernel programs (`agent-ebpf`) with the nightly toolchain and
/// bpf-linker; `src/ebpf.rs` embeds the object with `include_bytes_aligned!`.
fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("agent crate has no parent directory"))?
        .join("agent-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "hostscope-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context(
        "building the eBPF programs (run `cargo xtask setup` if bpf-linker or rust-src is missing)",
    )
}
