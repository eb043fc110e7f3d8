//! The `engine` binary: commands on the small fixture models, and errors as one clear line.

use std::path::PathBuf;
use std::process::Command;

fn engine(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_engine")).args(args).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into(),
        String::from_utf8_lossy(&output.stderr).into(),
    )
}

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name).display().to_string()
}

#[test]
fn inspect_lists_metadata_and_tensors() {
    let (ok, out, _) = engine(&["inspect", &fixture("llama.gguf")]);
    assert!(ok);
    assert!(out.contains("general.architecture") && out.contains("\"llama\""), "{out}");
    assert!(out.contains("token_embd.weight") && out.contains("[64, 300]"), "{out}");
}

#[test]
fn generate_runs_the_default_model_and_reports_speed() {
    // No --model: SmolLM2, fetched once and cached (as tests/smollm2.rs also needs).
    let args = ["generate", "The capital of France is", "-n", "6", "--temperature", "0", "--backend", "cpu"];
    let (ok, out, err) = engine(&args);
    assert!(ok, "{err}");
    assert!(out.starts_with("The capital of France is Paris."), "{out}");
    assert!(err.contains("generated at") && err.contains("tok/s"), "{err}");
    let (_, again, _) = engine(&args);
    assert_eq!(out, again, "greedy generation is deterministic");
    let sampled = ["generate", "Once upon a time", "-n", "12", "--seed", "3", "--backend", "cpu"];
    assert_eq!(engine(&sampled).1, engine(&sampled).1, "the same seed gives the same text");
}

#[test]
fn verify_prints_the_sha256() {
    let path = fixture("gpt2.tokens.json");
    let (ok, out, _) = engine(&["verify", &path]);
    assert!(ok);
    let expected = engine::provenance::sha256_file(std::path::Path::new(&path), &|_, _| {}).unwrap();
    assert_eq!(out.split_whitespace().next(), Some(expected.as_str()));
}

#[test]
fn errors_are_one_line_and_fail() {
    let (ok, _, err) = engine(&["generate", "x", "-m", "/nonexistent.gguf", "--backend", "cpu"]);
    assert!(!ok);
    assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
    assert!(err.contains("/nonexistent.gguf") && !err.contains("panicked"), "{err}");

    let not_gguf = fixture("llama.tokens.json");
    let (ok, _, err) = engine(&["inspect", &not_gguf]);
    assert!(!ok && err.contains("not a GGUF file"), "{err}");

    // Asking for the GPU where there is none is an error that says so (on a GPU machine the same
    // command loads the model on the GPU, which tests/gpu_models.rs covers).
    if host::Gpu::new(0).is_err() {
        let (ok, _, err) = engine(&["generate", "x", "--backend", "cuda"]);
        assert!(!ok && err.contains("no CUDA driver found"), "{err}");
    }

    let (ok, _, err) =
        engine(&["generate", "one two three four five six seven", "-c", "4", "--backend", "cpu"]);
    assert!(!ok && err.contains("context holds 4"), "{err}");
}

/// A reader that stops early (`engine inspect ... | head`) ends the output without a panic.
#[test]
fn inspect_into_a_closed_pipe_exits_quietly() {
    use std::io::Read;
    use std::process::Stdio;
    let vocab = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/vocab/ggml-vocab-llama-bpe.gguf");
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["inspect", "--full", &vocab.display().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 64];
    child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    drop(child.stdout.take()); // the reader goes away with megabytes still to come
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
