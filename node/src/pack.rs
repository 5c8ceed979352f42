//! Packs a working tree for shipping (`testmesh run --workdir`): the files a `git status` would
//! consider (`.gitignore`, `.git/info/exclude` and a `.testmeshignore` are honoured, `.git`
//! itself is left out) into a gzipped tar whose bytes depend only on the files' paths, contents
//! and modes — not on when they were checked out — so that the same tree gives the same
//! SHA-256 and a second run ships nothing.

use std::path::Path;

use sha2::{Digest, Sha256};

/// The name of the ignore file of testmesh's own (gitignore syntax).
pub const IGNORE_FILE: &str = ".testmeshignore";
/// Fixed modification time of every entry (1980-01-01, as reproducible zips use).
const MTIME: u64 = 315_532_800;

#[derive(Debug)]
pub struct Packed {
    pub bytes: Vec<u8>,
    /// Lowercase hex SHA-256 of `bytes`.
    pub hash: String,
    pub files: usize,
    /// Bytes of the files before compression.
    pub raw_bytes: u64,
}

/// Packs `dir`; refuses a tree whose archive would be over `max` bytes, naming the largest
/// files so they can be ignored.
pub fn pack(dir: &Path, max: u64) -> Result<Packed, String> {
    let meta = std::fs::metadata(dir).map_err(|e| format!("--workdir {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("--workdir {}: not a directory", dir.display()));
    }
    let walk = ignore::WalkBuilder::new(dir)
        .hidden(false)
        .git_ignore(true)
        .git_exclude(true)
        .git_global(false)
        .require_git(false)
        .ignore(false)
        .parents(false)
        .follow_links(false)
        .add_custom_ignore_filename(IGNORE_FILE)
        .filter_entry(|e| e.file_name() != ".git")
        .sort_by_file_path(|a, b| a.cmp(b))
        .build();
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    let (mut files, mut raw) = (0usize, 0u64);
    let mut sizes: Vec<(u64, String)> = Vec::new();
    for entry in walk {
        let e = entry.map_err(|e| format!("walking {}: {e}", dir.display()))?;
        let Ok(rel) = e.path().strip_prefix(dir) else {
            continue;
        };
        if rel.as_os_str().is_empty() {
            continue;
        }
        let Some(ft) = e.file_type() else { continue };
        let m = std::fs::symlink_metadata(e.path())
            .map_err(|err| format!("{}: {err}", e.path().display()))?;
        let mut h = tar::Header::new_gnu();
        h.set_mtime(MTIME);
        h.set_uid(0);
        h.set_gid(0);
        if ft.is_symlink() {
            let target = std::fs::read_link(e.path())
                .map_err(|err| format!("{}: {err}", e.path().display()))?;
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            tar.append_link(&mut h, rel, &target)
                .map_err(|err| format!("packing {}: {err}", rel.display()))?;
        } else if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_mode(0o755);
            tar.append_data(&mut h, rel, std::io::empty())
                .map_err(|err| format!("packing {}: {err}", rel.display()))?;
        } else if ft.is_file() {
            use std::os::unix::fs::PermissionsExt;
            // Only the executable bit matters (git keeps no more).
            let mode = if m.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(m.len());
            h.set_mode(mode);
            let f = std::fs::File::open(e.path())
                .map_err(|err| format!("{}: {err}", e.path().display()))?;
            tar.append_data(&mut h, rel, f)
                .map_err(|err| format!("packing {}: {err}", rel.display()))?;
            files += 1;
            raw += m.len();
            sizes.push((m.len(), rel.display().to_string()));
            // Stop as soon as the archive is over the limit, not after compressing it all.
            if tar.get_ref().get_ref().len() as u64 > max {
                return Err(too_large(
                    dir,
                    tar.get_ref().get_ref().len() as u64,
                    max,
                    sizes,
                ));
            }
        }
    }
    let bytes = tar
        .into_inner()
        .and_then(|gz| gz.finish())
        .map_err(|e| format!("packing {}: {e}", dir.display()))?;
    if bytes.len() as u64 > max {
        return Err(too_large(dir, bytes.len() as u64, max, sizes));
    }
    let hash = hex::encode(Sha256::digest(&bytes));
    Ok(Packed {
        bytes,
        hash,
        files,
        raw_bytes: raw,
    })
}

/// The error for a tree over the limit, naming its largest files (of those packed so far).
fn too_large(dir: &Path, packed: u64, max: u64, mut sizes: Vec<(u64, String)>) -> String {
    sizes.sort_by(|a, b| b.cmp(a));
    let biggest: Vec<String> = sizes
        .iter()
        .take(5)
        .map(|(n, p)| format!("{p} ({})", bytesize::ByteSize(*n)))
        .collect();
    format!(
        "{} packs to over {} compressed ({} so far), over the {} limit: list what the tasks do not need in {IGNORE_FILE} (gitignore syntax) or .gitignore; the largest files are {}",
        dir.display(),
        bytesize::ByteSize(max),
        bytesize::ByteSize(packed),
        bytesize::ByteSize(max),
        biggest.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_tree_packs_to_the_same_hash_and_ignores_are_honoured() {
        let a = tempfile::tempdir().unwrap();
        let write = |root: &Path, p: &str, s: &str| {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, s).unwrap();
        };
        let root = a.path();
        write(root, "src/test_a.py", "def test_a(): pass\n");
        write(root, ".gitignore", "build/\n*.pyc\n");
        write(root, IGNORE_FILE, "data/\n");
        write(root, "build/out.bin", "x");
        write(root, "src/__pycache__/a.pyc", "x");
        write(root, "data/big.bin", "x");
        write(root, ".git/HEAD", "ref");
        let p1 = pack(a.path(), 1 << 20).unwrap();
        // Touching files (a fresh checkout) changes nothing.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(a.path().join("src/test_a.py"), "def test_a(): pass\n").unwrap();
        let p2 = pack(a.path(), 1 << 20).unwrap();
        assert_eq!(p1.hash, p2.hash);
        assert_eq!(p1.files, 3, "src/test_a.py, .gitignore, .testmeshignore");
        let dest = tempfile::tempdir().unwrap();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&p1.bytes[..]));
        ar.unpack(dest.path()).unwrap();
        assert!(dest.path().join("src/test_a.py").exists());
        for gone in [
            "build/out.bin",
            "data/big.bin",
            ".git/HEAD",
            "src/__pycache__/a.pyc",
        ] {
            assert!(!dest.path().join(gone).exists(), "{gone}");
        }
        write(a.path(), "src/other.py", "y");
        assert_ne!(pack(a.path(), 1 << 20).unwrap().hash, p1.hash);
        let err = pack(a.path(), 10).unwrap_err();
        assert!(
            err.contains(IGNORE_FILE) && err.contains("largest"),
            "{err}"
        );
        assert!(pack(&a.path().join("nope"), 1 << 20).is_err());
    }
}
