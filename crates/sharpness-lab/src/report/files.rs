//! Result files: atomic writes (a crash leaves the old file or the new one, never a mixture), the
//! temporary names they use, and CSV serialisation.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, anyhow};

/// Writes `bytes` to `path` atomically: a temporary file in the same directory (created if
/// missing), flushed to disk, then renamed over `path`; a crash leaves either the old or the new
/// file, never a mixture.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = temp_path(path);
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// A temporary path next to `path`, unique per process and call: `.{name}.tmp-{pid}-{n}`
/// ([`temp_file_pid`] reads the pid back, so that a later run can remove a killed run's files).
pub fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// The pid in a name made by [`temp_path`] (also with an extension appended), if it is one.
pub fn temp_file_pid(path: &Path) -> Option<u32> {
    let name = path.file_name()?.to_str()?;
    let (_, tail) = name.strip_prefix('.')?.rsplit_once(".tmp-")?;
    let (pid, rest) = tail.split_once('-')?;
    let counter = rest.split('.').next()?;
    counter.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Serialises rows to CSV bytes.
pub fn csv_bytes<S: serde::Serialize>(rows: &[S]) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(vec![]);
    for r in rows {
        w.serialize(r)?;
    }
    w.into_inner().map_err(|e| anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_unique_and_carry_the_pid() {
        let a = temp_path(Path::new("out/metrics.csv"));
        let b = temp_path(Path::new("out/metrics.csv"));
        assert_ne!(a, b);
        assert_eq!(temp_file_pid(&a), Some(std::process::id()));
        let png = PathBuf::from(format!("{}.png", a.display()));
        assert_eq!(temp_file_pid(&png), Some(std::process::id()));
        assert_eq!(temp_file_pid(Path::new("out/metrics.csv")), None);
    }
}
