//! Builds the `gpu/` kernel crate into one PTX module and hands its path to `src/lib.rs`.
//!
//! The kernels need a pinned nightly (named in `gpu/rust-toolchain.toml`) with its `rust-src`
//! component, because `-Zbuild-std=core` compiles `core` for `nvptx64-nvidia-cuda`. Set-up is part
//! of the build: the toolchain is installed through rustup when it is missing; offline, an existing
//! `nightly` toolchain of the same commit is linked under the pinned name and `rust-src` is unpacked
//! from the archive named by `GPU_RUST_SRC_ARCHIVE` (checksum verified). When all of that fails the
//! error says what to run.

use sha2::{Digest, Sha256};
use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[path = "src/launch_bounds.rs"]
mod launch_bounds;
#[path = "src/pdl.rs"]
mod pdl;

/// The commit of the pinned kernel toolchain, used to recognise an identical `nightly` offline.
const KERNEL_TOOLCHAIN_COMMIT: &str = "e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a";
/// SHA-256 of `rust-src-nightly-2026-05-20.tar.xz` (the offline rust-src archive).
const RUST_SRC_ARCHIVE_SHA256: &str = "b3a3316f25e320b90d4e3fc3ed2ab23ee2d591945beb6443b096a84fd5a78070";
/// Every kernel runs on sm_80 and later; the sm_90 variant (programmatic dependent launch, see
/// src/pdl.rs) is derived from this module's text.
const TARGET_CPU: &str = "sm_80";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let gpu_dir = manifest_dir.join("..").join("gpu");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed={}", gpu_dir.join("src").display());
    println!("cargo:rerun-if-changed={}", gpu_dir.join("Cargo.toml").display());
    println!("cargo:rerun-if-changed={}", gpu_dir.join("rust-toolchain.toml").display());
    println!("cargo:rerun-if-changed=src/pdl.rs");
    println!("cargo:rerun-if-changed=src/launch_bounds.rs");
    println!("cargo:rerun-if-env-changed=GPU_RUST_SRC_ARCHIVE");

    if let Err(message) = build(&gpu_dir, &out_dir) {
        eprintln!("\nerror: could not build the GPU kernels (gpu/ -> PTX)\n\n{message}\n");
        std::process::exit(1);
    }
}

fn build(gpu_dir: &Path, out_dir: &Path) -> Result<(), String> {
    let toolchain = pinned_toolchain(gpu_dir)?;
    ensure_toolchain(&toolchain)?;

    let target_dir = out_dir.join("gpu-target");
    let deps = target_dir.join("nvptx64-nvidia-cuda").join("release").join("deps");
    // Stale modules from earlier builds would make the choice below ambiguous.
    let _ = fs::remove_dir_all(&deps);
    let mut cargo = Command::new("rustup");
    cargo
        .args(["run", &toolchain, "cargo", "rustc", "--release", "--locked"])
        .args(["--target", "nvptx64-nvidia-cuda", "-Zbuild-std=core"])
        .arg("--manifest-path")
        .arg(gpu_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .args(["--", "--emit=asm", "-C"])
        .arg(format!("target-cpu={TARGET_CPU}"));
    // The outer build's toolchain and wrappers (clippy sets RUSTC_WORKSPACE_WRAPPER) must not leak
    // into the kernel build.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTDOC",
        "CARGO",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cargo.env_remove(var);
    }
    let output = cargo.output().map_err(|e| format!("could not run `rustup run {toolchain} cargo`: {e}"))?;
    if !output.status.success() {
        return Err(format!("the kernel build failed:\n{}", String::from_utf8_lossy(&output.stderr)));
    }

    let ptx = fs::read_dir(&deps)
        .map_err(|e| format!("no kernel output in {}: {e}", deps.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("gpu-") && name.ends_with(".s")
        })
        .ok_or_else(|| format!("the kernel build wrote no gpu-*.s into {}", deps.display()))?;
    let text = fs::read_to_string(&ptx).map_err(|e| format!("could not read {}: {e}", ptx.display()))?;
    let text = launch_bounds::with_launch_bounds(&text).map_err(|e| format!("the launch bounds: {e}"))?;
    fs::write(out_dir.join("kernels.ptx"), &text).map_err(|e| format!("could not write kernels.ptx: {e}"))?;
    let hopper = pdl::dependent_launch_variant(&text).map_err(|e| format!("the sm_90 variant: {e}"))?;
    fs::write(out_dir.join("kernels_sm90.ptx"), hopper)
        .map_err(|e| format!("could not write kernels_sm90.ptx: {e}"))?;
    Ok(())
}

/// The channel named in `gpu/rust-toolchain.toml`.
fn pinned_toolchain(gpu_dir: &Path) -> Result<String, String> {
    let path = gpu_dir.join("rust-toolchain.toml");
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"').to_string())
        .next()
        .ok_or_else(|| format!("{} names no channel", path.display()))
}

fn rustup(args: &[&str]) -> Option<String> {
    let output = Command::new("rustup")
        .args(args)
        .env_remove("RUSTUP_TOOLCHAIN")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn sysroot(toolchain: &str) -> Option<PathBuf> {
    rustup(&["run", toolchain, "rustc", "--print", "sysroot"]).map(PathBuf::from)
}

fn has_rust_src(sysroot: &Path) -> bool {
    sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml").is_file()
}

fn ensure_toolchain(toolchain: &str) -> Result<(), String> {
    if sysroot(toolchain).is_some_and(|s| has_rust_src(&s)) {
        return Ok(());
    }
    println!("cargo:warning=kernel toolchain {toolchain} with rust-src is missing; trying rustup");
    let installed =
        rustup(&["toolchain", "install", toolchain, "--profile", "minimal", "--component", "rust-src"])
            .is_some();
    if installed && sysroot(toolchain).is_some_and(|s| has_rust_src(&s)) {
        return Ok(());
    }
    offline_setup(toolchain).map_err(|why| {
        format!(
            "The kernels need the toolchain {toolchain} with rust-src. rustup could not install it, \
             and the offline set-up failed: {why}\n\n\
             Online, run:\n    rustup toolchain install {toolchain} --profile minimal --component rust-src\n\
             Offline, with a `nightly` toolchain of commit {KERNEL_TOOLCHAIN_COMMIT} installed, set\n    \
             GPU_RUST_SRC_ARCHIVE=/path/to/rust-src-{toolchain}.tar.xz\nand build again."
        )
    })
}

/// Links an installed `nightly` of the pinned commit under the pinned name, then unpacks rust-src.
fn offline_setup(toolchain: &str) -> Result<(), String> {
    if sysroot(toolchain).is_none() {
        let nightly = sysroot("nightly").ok_or("no `nightly` toolchain is installed")?;
        let version = rustup(&["run", "nightly", "rustc", "-vV"]).unwrap_or_default();
        if !version.contains(KERNEL_TOOLCHAIN_COMMIT) {
            return Err(format!(
                "the installed `nightly` is not commit {KERNEL_TOOLCHAIN_COMMIT}:\n{version}"
            ));
        }
        let toolchains = nightly.parent().ok_or("odd nightly sysroot")?;
        let host = env::var("HOST").unwrap_or_else(|_| "x86_64-unknown-linux-gnu".into());
        let link = toolchains.join(format!("{toolchain}-{host}"));
        // A concurrent build may have made the link first; that is fine.
        if let Err(e) = std::os::unix::fs::symlink(&nightly, &link)
            && sysroot(toolchain).is_none()
        {
            return Err(format!("could not link {}: {e}", link.display()));
        }
        println!("cargo:warning=linked the installed nightly ({}) as {}", nightly.display(), link.display());
    }
    let sysroot = sysroot(toolchain).ok_or("the linked toolchain does not run")?;
    if has_rust_src(&sysroot) {
        return Ok(());
    }
    let archive = env::var_os("GPU_RUST_SRC_ARCHIVE")
        .map(PathBuf::from)
        .ok_or("GPU_RUST_SRC_ARCHIVE is not set, so there is no rust-src archive to unpack")?;
    let bytes = fs::read(&archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    let digest: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    if digest != RUST_SRC_ARCHIVE_SHA256 {
        return Err(format!(
            "{} has SHA-256 {digest}, expected {RUST_SRC_ARCHIVE_SHA256}",
            archive.display()
        ));
    }
    let destination = sysroot.join("lib/rustlib/src");
    fs::create_dir_all(&destination).map_err(|e| format!("{}: {e}", destination.display()))?;
    let status = Command::new("tar")
        .arg("xJf")
        .arg(&archive)
        .arg("-C")
        .arg(&destination)
        .status()
        .map_err(|e| format!("could not run tar: {e}"))?;
    if !status.success() || !has_rust_src(&sysroot) {
        return Err(format!("unpacking {} did not give rust-src", archive.display()));
    }
    println!("cargo:warning=unpacked rust-src from {} (checksum verified)", archive.display());
    Ok(())
}
