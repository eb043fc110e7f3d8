//! The fuzz targets' inputs replayed without the fuzzer: every seed (`fuzz/seeds/<target>/`) and
//! every minimized input that once crashed, hung or blew up memory (`tests/data/fuzz/<target>/`),
//! through the same harness functions the fuzz targets call (`fuzz/src/lib.rs`, included here).
//! See `fuzz/README.md` for what each finding was and how it was fixed.

#[allow(dead_code)]
#[path = "../../fuzz/src/lib.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Every file under `dirs`, sorted, so that a failure names a stable input.
fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dirs = [root.join("../fuzz/seeds").join(target), root.join("tests/data/fuzz").join(target)];
    let mut files: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `harness` on each input of `target`; each must finish, and quickly (a fuzzer's timeout).
fn replay(target: &str, harness: fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no inputs for {target}");
    for path in files {
        let data = std::fs::read(&path).unwrap();
        let start = Instant::now();
        harness(&data);
        let took = start.elapsed();
        assert!(took < Duration::from_secs(10), "{} took {took:?}", path.display());
    }
}

#[test]
fn gguf_reader_inputs() {
    replay("gguf_reader", harness::gguf_reader);
}

#[test]
fn tokenizer_inputs() {
    replay("tokenizer", harness::tokenizer);
}

#[test]
fn chat_template_inputs() {
    replay("chat_template", harness::chat_template);
}

#[test]
fn sampler_inputs() {
    replay("sampler", harness::sampler);
}

#[test]
fn server_request_inputs() {
    replay("server_request", harness::server_request);
}
