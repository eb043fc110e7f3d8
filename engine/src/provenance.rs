//! Provenance of model files: SHA-256 (streamed, so a 12 GB file is never held in memory), an
//! allow-list of trusted hashes, and an append-only JSON-lines audit log of every load.

use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path}: line {line}: expected `<sha256 hex>  <name>`")]
    BadHashLine { path: String, line: usize },
    #[error(
        "{path} (SHA-256 {hash}) is not in the trusted hashes of {list}; pass --allow-untrusted to load it anyway"
    )]
    Untrusted { path: String, hash: String, list: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ProvenanceError + '_ {
    move |error| ProvenanceError::Io { path: path.display().to_string(), error }
}

/// Lowercase hex SHA-256 of the file at `path`, read in 1 MiB pieces; `progress(done, total)` is
/// called as it goes.
pub fn sha256_file(path: &Path, progress: &dyn Fn(u64, u64)) -> Result<String, ProvenanceError> {
    let mut file = File::open(path).map_err(io(path))?;
    let total = file.metadata().map_err(io(path))?.len();
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        done += n as u64;
        progress(done, total);
    }
    Ok(hex(&hasher.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hashes from a file of `sha256  name` lines (the format `sha256sum` writes; `#` comments and
/// blank lines are skipped).
pub fn read_trusted_hashes(path: &Path) -> Result<Vec<String>, ProvenanceError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut hashes = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let hash = line.split_whitespace().next().unwrap_or("");
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ProvenanceError::BadHashLine { path: path.display().to_string(), line: i + 1 });
        }
        hashes.push(hash.to_ascii_lowercase());
    }
    Ok(hashes)
}

/// What a load found out about a file, as one audit-log line.
#[derive(Debug, serde::Serialize)]
pub struct LoadRecord {
    pub time: String,
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub verified: bool,
}

/// Checks `path` against an optional trusted-hash list and appends a record to an optional audit
/// log. Without a list the file is loaded unverified; with one, a file not on it is refused unless
/// `allow_untrusted`.
pub fn check_model_file(
    path: &Path,
    trusted: Option<&Path>,
    allow_untrusted: bool,
    audit_log: Option<&Path>,
    progress: &dyn Fn(u64, u64),
) -> Result<LoadRecord, ProvenanceError> {
    let size = std::fs::metadata(path).map_err(io(path))?.len();
    let hash = sha256_file(path, progress)?;
    let verified = match trusted {
        Some(list) => read_trusted_hashes(list)?.contains(&hash),
        None => false,
    };
    let record = LoadRecord {
        time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        path: path.display().to_string(),
        size,
        sha256: hash.clone(),
        verified,
    };
    if let Some(log) = audit_log {
        let mut file = OpenOptions::new().create(true).append(true).open(log).map_err(io(log))?;
        let line = serde_json::to_string(&record).expect("a LoadRecord serialises");
        writeln!(file, "{line}").map_err(io(log))?;
    }
    if let Some(list) = trusted
        && !verified
        && !allow_untrusted
    {
        return Err(ProvenanceError::Untrusted {
            path: path.display().to_string(),
            hash,
            list: list.display().to_string(),
        });
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_input() {
        // SHA-256("abc") from FIPS 180-2's example.
        let dir = std::env::temp_dir().join(format!("engine-prov-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("abc");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path, &|_, _| {}).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );

        let list = dir.join("trusted");
        std::fs::write(
            &list,
            "# comment\nba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  abc\n",
        )
        .unwrap();
        let log = dir.join("audit.jsonl");
        let record = check_model_file(&path, Some(&list), false, Some(&log), &|_, _| {}).unwrap();
        assert!(record.verified);

        std::fs::write(&path, b"abd").unwrap();
        let error = check_model_file(&path, Some(&list), false, Some(&log), &|_, _| {}).unwrap_err();
        assert!(error.to_string().contains("not in the trusted hashes"), "{error}");
        let record = check_model_file(&path, Some(&list), true, Some(&log), &|_, _| {}).unwrap();
        assert!(!record.verified);
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "every load is logged, refused ones too");
        assert_eq!(lines[0]["verified"], true);
        assert_eq!(lines[2]["size"], 3);

        std::fs::write(&list, "not-a-hash  abc\n").unwrap();
        assert!(read_trusted_hashes(&list).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
