//! Extracting named files from a gzip-compressed tar archive (`npm pack` tarballs) with the
//! `tar` crate, each capped at the size it is expected to have: a crafted archive cannot write
//! more than that to disk.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use flate2::read::GzDecoder;

/// A file to extract: its path in the archive, where it goes, and the most bytes it may have.
pub(crate) struct Wanted {
    /// Path inside the archive.
    pub(crate) name: String,
    /// Destination.
    pub(crate) dest: PathBuf,
    /// Largest size accepted (bytes).
    pub(crate) max_bytes: u64,
}

/// Extracts the regular files of `wanted` from the `.tgz` at `archive`. Fails if one of them is
/// missing, not a regular file, or larger than its cap (checked against the header before
/// writing, and while copying).
pub(crate) fn extract_tgz(archive: &Path, wanted: &[Wanted]) -> anyhow::Result<()> {
    let file = File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?;
    let mut tar = tar::Archive::new(GzDecoder::new(BufReader::new(file)));
    let mut pending: HashMap<&str, &Wanted> = wanted.iter().map(|w| (w.name.as_str(), w)).collect();
    let context = || format!("reading archive {}", archive.display());
    for entry in tar.entries().with_context(context)? {
        let entry = entry.with_context(context)?;
        let name = entry
            .path()
            .with_context(context)?
            .to_string_lossy()
            .into_owned();
        let Some(want) = pending.remove(name.as_str()) else {
            continue;
        };
        if !entry.header().entry_type().is_file() {
            bail!("{}: {name} is not a regular file", archive.display());
        }
        let declared = entry.header().size()?;
        copy_capped(entry, declared, want)
            .with_context(|| format!("{}: extracting {name}", archive.display()))?;
    }
    if let Some(name) = pending.keys().next() {
        bail!("{}: archive has no file {name}", archive.display());
    }
    Ok(())
}

/// Copies an archive member that declares `declared` bytes to `want.dest`, refusing (and
/// removing) more than `want.max_bytes`.
pub(crate) fn copy_capped(entry: impl Read, declared: u64, want: &Wanted) -> anyhow::Result<()> {
    if declared > want.max_bytes {
        bail!(
            "declares {declared} bytes, more than the {} expected",
            want.max_bytes
        );
    }
    let mut out = File::create(&want.dest)
        .with_context(|| format!("cannot create {}", want.dest.display()))?;
    // One byte over the cap is enough to tell that it was exceeded.
    let copied = io::copy(&mut entry.take(want.max_bytes + 1), &mut out)?;
    if copied > want.max_bytes {
        drop(out);
        let _ = std::fs::remove_file(&want.dest);
        bail!("has more than the {} bytes expected", want.max_bytes);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tgz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut header = tar::Header::new_ustar();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, *data).unwrap();
        }
        let tar = builder.into_inner().unwrap();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&tar).unwrap();
        enc.finish().unwrap()
    }

    fn wanted(name: &str, dest: PathBuf, max_bytes: u64) -> Wanted {
        Wanted {
            name: name.into(),
            dest,
            max_bytes,
        }
    }

    #[test]
    fn extracts_wanted_files_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let archive = dir.join("a.tgz");
        let big = vec![7u8; 1000];
        std::fs::write(
            &archive,
            tgz(&[("package/x", b"skip me"), ("package/data/y", &big)]),
        )
        .unwrap();
        extract_tgz(&archive, &[wanted("package/data/y", dir.join("y"), 1000)]).unwrap();
        assert_eq!(std::fs::read(dir.join("y")).unwrap(), big);
        assert!(!dir.join("x").exists());
        let missing = extract_tgz(&archive, &[wanted("package/z", dir.join("z"), 10)]).unwrap_err();
        assert!(missing.to_string().contains("package/z"), "{missing}");
    }

    #[test]
    fn an_oversized_member_is_refused_before_it_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let archive = dir.join("bomb.tgz");
        // 8 MiB of zeros compress to a few KiB; the labels file is expected to be 60 008 bytes.
        std::fs::write(
            &archive,
            tgz(&[("package/data/labels", &vec![0u8; 8 << 20])]),
        )
        .unwrap();
        let dest = dir.join("labels");
        let err = extract_tgz(
            &archive,
            &[wanted("package/data/labels", dest.clone(), 60_008)],
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("60008"), "{err:#}");
        assert!(!dest.exists() || std::fs::metadata(&dest).unwrap().len() <= 60_008);
    }
}
