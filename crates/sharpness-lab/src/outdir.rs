//! Output locations, one rule for every command: a run directory is claimed before any work
//! starts — refused if it is a non-empty directory that is not a lab run (unless forced), checked
//! writable, locked exclusively for the run's lifetime (a second run into it is refused, naming the
//! holder) — and stale temporary files of dead processes are removed from it.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The marker that makes a directory a lab run (written when a run claims it).
pub const MARKER_FILE: &str = ".sharpness-lab-run";
const MARKER_TEXT: &str = "This directory holds results of sharpness-lab.\n";
/// The lock file; holds the pid of the process that holds the lock.
pub const LOCK_FILE: &str = ".sharpness-lab.lock";

/// A claimed run directory; the lock is released when this is dropped (or the process dies,
/// since the operating system drops the lock with the file descriptor).
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    _lock: File,
}

impl RunDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Claims `dir` as the output of a run: see the module documentation. `force` allows a
/// non-empty directory that is not a lab run (never the filesystem root).
pub fn claim(dir: &Path, force: bool) -> Result<RunDir> {
    if dir.parent().is_none() || dir.canonicalize().is_ok_and(|d| d.parent().is_none()) {
        bail!(
            "--out {}: refusing to write into the filesystem root",
            dir.display()
        );
    }
    if dir.exists() && !dir.is_dir() {
        bail!("--out {}: exists and is not a directory", dir.display());
    }
    if !force && !dir.join(MARKER_FILE).exists() && is_non_empty(dir)? {
        bail!(
            "--out {}: the directory is not empty and is not a sharpness-lab run directory \
             (no {MARKER_FILE}); its files could be overwritten. Choose a new or empty \
             directory, or pass --force-out to write into it anyway",
            dir.display()
        );
    }
    create_marked(dir).with_context(|| format!("--out {}: cannot create", dir.display()))?;
    let lock_path = dir.join(LOCK_FILE);
    let mut lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .with_context(|| format!("--out {}: not writable", dir.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = lock.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "another process".to_string(),
                pid => format!("process {pid}"),
            };
            bail!(
                "--out {}: another sharpness-lab run ({holder}) is writing into it; wait for it \
                 to finish or choose another --out",
                dir.display()
            );
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("--out {}: cannot lock", dir.display()));
        }
    }
    let write = |lock: &mut File| -> std::io::Result<()> {
        lock.set_len(0)?;
        lock.seek(SeekFrom::Start(0))?;
        writeln!(lock, "{}", std::process::id())?;
        fs::write(dir.join(MARKER_FILE), MARKER_TEXT)
    };
    write(&mut lock).with_context(|| format!("--out {}: not writable", dir.display()))?;
    remove_stale_temp_files(dir);
    Ok(RunDir {
        path: dir.to_path_buf(),
        _lock: lock,
    })
}

/// Checks, before any work, that the output file `path` can be written: its directory is created
/// if missing and must accept a file; `path` must not be a directory.
pub fn check_output_file(path: &Path, flag: &str) -> Result<()> {
    if path.is_dir() {
        bail!("{flag} {}: is a directory, expected a file", path.display());
    }
    let dir = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => dir,
        None => Path::new("."),
    };
    create_marked(dir)
        .with_context(|| format!("{flag} {}: cannot create {}", path.display(), dir.display()))?;
    let probe = crate::report::temp_path(path);
    File::create(&probe)
        .and_then(|_| fs::remove_file(&probe))
        .with_context(|| {
            format!(
                "{flag} {}: {} is not writable",
                path.display(),
                dir.display()
            )
        })
}

/// Creates `dir` and its missing parents, marking each directory it creates as the lab's, so that
/// nested defaults (`results/train` and then `reproduce --out results`) are accepted.
fn create_marked(dir: &Path) -> std::io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    fs::create_dir_all(dir)?;
    for created in missing.into_iter().filter(|d| !d.as_os_str().is_empty()) {
        fs::write(created.join(MARKER_FILE), MARKER_TEXT)?;
    }
    Ok(())
}

fn is_non_empty(dir: &Path) -> Result<bool> {
    match fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("--out {}: cannot read", dir.display())),
    }
}

/// Whether process `pid` is alive. Where that cannot be told (no `/proc`), it is assumed alive,
/// so nothing of a live process is ever removed.
pub fn pid_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

/// Removes, under `dir` (recursively), the temporary files of [`crate::report::temp_path`] left
/// by processes that are no longer running (a killed run); failures are ignored (best effort).
pub fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            remove_stale_temp_files(&path);
        } else if let Some(pid) = crate::report::temp_file_pid(&path)
            && !pid_alive(pid)
        {
            let _ = fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_claim_is_refused_naming_the_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let first = claim(&dir, false).unwrap();
        let err = claim(&dir, false).unwrap_err().to_string();
        assert!(
            err.contains(&format!("process {}", std::process::id())),
            "{err}"
        );
        drop(first);
        claim(&dir, false).unwrap();
    }

    #[test]
    fn foreign_directories_and_the_root_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("thesis.tex"), "mine").unwrap();
        let err = claim(tmp.path(), false).unwrap_err().to_string();
        assert!(err.contains("--force-out"), "{err}");
        claim(tmp.path(), true).unwrap();
        assert!(claim(Path::new("/"), true).is_err());
        let empty = tempfile::tempdir().unwrap();
        claim(empty.path(), false).unwrap();
        // Parents the lab creates are the lab's: a run into them later is accepted.
        let results = empty.path().join("results");
        drop(claim(&results.join("train"), false).unwrap());
        claim(&results, false).unwrap();
    }

    #[test]
    fn stale_temp_files_of_dead_processes_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let sub = tmp.path().join("runs/a");
        fs::create_dir_all(&sub).unwrap();
        // pid 0 is never a user process (no /proc/0).
        let stale = sub.join(".metrics.csv.tmp-0-3");
        let live = sub.join(format!(".metrics.csv.tmp-{}-0", std::process::id()));
        for p in [&stale, &live] {
            fs::write(p, "partial").unwrap();
        }
        remove_stale_temp_files(tmp.path());
        assert!(!stale.exists());
        assert!(live.exists());
    }
}
