//! A minimal reader for gzip-compressed ustar archives (`npm pack` tarballs).
//!
//! It extracts only named regular files; everything else (directories, pax
//! headers, other files) is skipped. Enough for the one archive the fetch step
//! unpacks, without a dependency on the `tar` crate or binary.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use flate2::read::GzDecoder;

const BLOCK: u64 = 512;

/// Extracts the regular files named in `wanted` (archive path → destination) from
/// the `.tgz` at `archive`. Fails if any of them is missing from the archive.
pub(crate) fn extract_tgz(archive: &Path, wanted: &[(String, PathBuf)]) -> anyhow::Result<()> {
    let file = File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?;
    let mut reader = GzDecoder::new(BufReader::new(file));
    let mut pending: HashMap<&str, &Path> = wanted
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_path()))
        .collect();
    while let Some(entry) = next_header(&mut reader)? {
        let dest = pending
            .remove(entry.name.as_str())
            .filter(|_| entry.is_file);
        copy_entry(&mut reader, entry.size, dest)
            .with_context(|| format!("{}: extracting {}", archive.display(), entry.name))?;
    }
    if let Some(name) = pending.keys().next() {
        bail!("{}: archive has no file {name}", archive.display());
    }
    Ok(())
}

/// One archive member's header.
struct Entry {
    name: String,
    size: u64,
    is_file: bool,
}

/// Reads the next header block; `None` at the end-of-archive (zero) block.
fn next_header(reader: &mut impl Read) -> anyhow::Result<Option<Entry>> {
    let mut block = [0u8; BLOCK as usize];
    reader
        .read_exact(&mut block)
        .context("tar archive ends without end-of-archive block")?;
    if block.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let mut name = c_string(&block[0..100]);
    let prefix = c_string(&block[345..500]);
    if &block[257..262] == b"ustar" && !prefix.is_empty() {
        name = format!("{prefix}/{name}");
    }
    let size = octal(&block[124..136]).with_context(|| format!("bad size field for {name}"))?;
    let is_file = matches!(block[156], b'0' | 0);
    Ok(Some(Entry {
        name,
        size,
        is_file,
    }))
}

/// Copies (to `dest`) or skips an entry's data, including the padding to 512 bytes.
fn copy_entry(reader: &mut impl Read, size: u64, dest: Option<&Path>) -> anyhow::Result<()> {
    let mut data = reader.take(size);
    let copied = match dest {
        Some(path) => {
            let mut out =
                File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
            io::copy(&mut data, &mut out)?
        }
        None => io::copy(&mut data, &mut io::sink())?,
    };
    if copied != size {
        bail!("archive truncated: entry has {copied} of {size} bytes");
    }
    let padding = (BLOCK - size % BLOCK) % BLOCK;
    io::copy(&mut reader.take(padding), &mut io::sink())?;
    Ok(())
}

/// A NUL-terminated string field.
fn c_string(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// An octal number field (space or NUL terminated).
fn octal(field: &[u8]) -> anyhow::Result<u64> {
    let text = c_string(field);
    let text = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8).with_context(|| format!("not an octal number: {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A ustar header block for a regular file.
    fn header(name: &str, size: usize) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h
    }

    fn tgz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = Vec::new();
        for (name, data) in files {
            tar.extend(header(name, data.len()));
            tar.extend_from_slice(data);
            tar.resize(tar.len().div_ceil(512) * 512, 0);
        }
        tar.extend(vec![0u8; 1024]);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&tar).unwrap();
        enc.finish().unwrap()
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
        extract_tgz(&archive, &[("package/data/y".into(), dir.join("y"))]).unwrap();
        assert_eq!(std::fs::read(dir.join("y")).unwrap(), big);
        assert!(!dir.join("x").exists());
        let missing = extract_tgz(&archive, &[("package/z".into(), dir.join("z"))]).unwrap_err();
        assert!(missing.to_string().contains("package/z"), "{missing}");
    }
}
