//! Shipped working trees (`testmesh run --workdir`): gzipped tar archives named by the SHA-256
//! of their bytes, in `<data-dir>/code/`. The node a submitter uploads to keeps the archive;
//! a worker fetches it from there over the mesh in chunks (resuming a partial download from
//! its `.part` file), checks the hash, keeps it in a cache bounded by `--code-cache-size`
//! (least recently used goes first) and unpacks a copy per attempt. The same archive is
//! fetched once per worker however many tasks use it.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use testmesh_consensus::NodeId;
use testmesh_consensus::suite::CodeRef;

use super::clock::SharedClock;
use super::writer::Writer;
use crate::mesh::MeshClient;
use crate::mesh::rpc::{Request, Response};

/// Bytes one mesh request carries (well inside a frame).
pub const CHUNK: u64 = 4 << 20;
/// Tries per chunk before the fetch is given up (each resumes where the last stopped).
const TRIES: u32 = 5;
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
/// Default largest upload.
pub const DEFAULT_MAX_UPLOAD: u64 = 256 << 20;
/// Default bound of the cache.
pub const DEFAULT_CACHE_BYTES: u64 = 4 << 30;

#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error("{0}")]
    Io(String),
    #[error("the archive's SHA-256 is {got}, not {want}: it was damaged on the way; nothing kept")]
    HashMismatch { want: String, got: String },
    #[error("the archive is over the {max}-byte limit of this node (--max-code-size)")]
    TooLarge { max: u64 },
    #[error("cannot fetch the code {hash} from node {origin}: {why}")]
    Fetch {
        hash: String,
        origin: NodeId,
        why: String,
    },
}

fn io(what: &str, p: &Path, e: std::io::Error) -> CodeError {
    CodeError::Io(format!("{what} {}: {e}", p.display()))
}

/// The archive store of a node; cheap to clone.
#[derive(Clone)]
pub struct CodeStore {
    dir: PathBuf,
    max_bytes: Arc<AtomicU64>,
    max_upload: Arc<AtomicU64>,
    /// One fetch per archive at a time: tasks of one run on one worker wait for the same fetch.
    fetching: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Bytes fetched from other nodes since start (for the metrics and the tests).
    pub fetched_bytes: Arc<AtomicU64>,
    writer: Writer,
    mesh: Option<MeshClient>,
    clock: SharedClock,
    /// Who else may hold an archive (the workers), and this node.
    ledger: Option<testmesh_consensus::store::LedgerReader>,
    me: Option<NodeId>,
}

impl CodeStore {
    pub fn new(
        data_dir: &Path,
        writer: Writer,
        mesh: Option<MeshClient>,
        clock: SharedClock,
    ) -> Self {
        CodeStore {
            dir: data_dir.join("code"),
            max_bytes: Arc::new(AtomicU64::new(DEFAULT_CACHE_BYTES)),
            max_upload: Arc::new(AtomicU64::new(DEFAULT_MAX_UPLOAD)),
            fetching: Default::default(),
            fetched_bytes: Default::default(),
            writer,
            mesh,
            clock,
            ledger: None,
            me: None,
        }
    }

    /// Lets a fetch fall back on other workers when the origin cannot serve it.
    pub fn with_peers(
        mut self,
        ledger: testmesh_consensus::store::LedgerReader,
        me: NodeId,
    ) -> Self {
        self.ledger = Some(ledger);
        self.me = Some(me);
        self
    }

    pub fn set_max_bytes(&self, bytes: u64) {
        self.max_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Largest archive an upload may bring (`--max-code-size`).
    pub fn max_upload(&self) -> u64 {
        self.max_upload.load(Ordering::Relaxed)
    }

    pub fn set_max_upload(&self, bytes: u64) {
        self.max_upload.store(bytes, Ordering::Relaxed);
    }

    pub fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}.tar.gz"))
    }

    /// The archive's size when this node holds it (which counts as a use for the cache).
    pub fn has(&self, hash: &str) -> Option<u64> {
        valid_hash(hash).ok()?;
        let p = self.path(hash);
        let len = std::fs::metadata(&p).ok().map(|m| m.len())?;
        touch(&p, self.clock.now());
        Some(len)
    }

    /// Archives that unfinished tasks refer to: never evicted.
    fn in_use(&self) -> std::collections::HashSet<String> {
        let Some(l) = &self.ledger else {
            return Default::default();
        };
        let l = l.read();
        l.tasks()
            .filter(|t| !t.state.is_final())
            .filter_map(|t| t.spec.suite().code.as_ref().map(|c| c.hash.clone()))
            .collect()
    }

    /// Stores an uploaded archive from `body` (blocking reads), checking its hash and size.
    pub fn put(&self, hash: &str, body: &mut dyn Read, max: u64) -> Result<u64, CodeError> {
        let n = store(&self.dir, hash, body, max)?;
        self.evict(Some(hash));
        Ok(n)
    }

    /// Part of an archive this node holds (what another node asks for over the mesh).
    pub fn read_local(
        &self,
        hash: &str,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<u8>, u64), String> {
        valid_hash(hash)?;
        let p = self.path(hash);
        let mut f = std::fs::File::open(&p)
            .map_err(|_| format!("this node does not hold the code {hash}"))?;
        if offset == 0 {
            touch(&p, self.clock.now());
        }
        let len = f.metadata().map_err(|e| e.to_string())?.len();
        f.seek(SeekFrom::Start(offset.min(len)))
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        f.take(limit.min(CHUNK))
            .read_to_end(&mut buf)
            .map_err(|e| e.to_string())?;
        Ok((buf, len))
    }

    /// The archive of `code`, fetched from its origin unless this node holds it already.
    pub async fn ensure(&self, code: &CodeRef) -> Result<PathBuf, CodeError> {
        let lock = {
            let mut m = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(code.hash.clone()).or_default().clone()
        };
        let _one = lock.lock().await;
        let path = self.path(&code.hash);
        if path.exists() {
            touch(&path, self.clock.now());
            return Ok(path);
        }
        let started = self.clock.instant();
        let r = self.fetch(code).await;
        if r.is_ok() {
            tracing::info!(
                "fetched code {} ({} bytes) from node {} in {:?}",
                &code.hash[..12],
                code.size,
                code.origin,
                self.clock.instant().duration_since(started)
            );
        }
        // (The lock's entry stays until the archive is evicted: a waiter and a newcomer must
        // never download into the same `.part` at once.)
        r?;
        self.evict(Some(&code.hash));
        Ok(path)
    }

    /// Fetches from the origin, else from any other worker (one that ran the same code keeps
    /// it in its cache); each source resumes where the last one stopped.
    async fn fetch(&self, code: &CodeRef) -> Result<(), CodeError> {
        let fail = |why: String| CodeError::Fetch {
            hash: code.hash.clone(),
            origin: code.origin,
            why,
        };
        let Some(mesh) = &self.mesh else {
            return Err(fail("this node has no mesh".into()));
        };
        let mut sources = vec![code.origin];
        if let Some(l) = &self.ledger {
            let l = l.read();
            sources.extend(
                l.workers()
                    .map(|w| w.id)
                    .filter(|id| *id != code.origin && Some(*id) != self.me),
            );
        }
        let mut why = Vec::new();
        for source in sources {
            let Some(peer) = self.writer.peer_of(source) else {
                if source == code.origin {
                    why.push(format!("node {source} is not reachable"));
                }
                continue;
            };
            let hash = code.hash.clone();
            let r = download(&self.dir, code, &self.fetched_bytes, |offset| {
                let req = Request::Code {
                    hash: hash.clone(),
                    offset,
                    limit: CHUNK,
                };
                async move {
                    match mesh.request(peer, req, CHUNK_TIMEOUT).await {
                        Ok(Response::Code(Ok(r))) => Ok(r),
                        Ok(Response::Code(Err(e))) => Err(Chunk::Refused(e)),
                        Ok(_) => Err(Chunk::Refused("unexpected answer".into())),
                        Err(e) => Err(Chunk::Transient(e.to_string())),
                    }
                }
            })
            .await;
            match r {
                Ok(()) => {
                    if source != code.origin {
                        tracing::info!("code {}: fetched from node {source}", &code.hash[..12]);
                    }
                    return Ok(());
                }
                // Whatever went wrong with one source (it lacks the archive, it sent damaged
                // bytes, it stopped answering), the next may do.
                Err(CodeError::Fetch { why: w, .. }) => {
                    if source == code.origin {
                        why.push(format!("node {source}: {w}"));
                    }
                }
                Err(e) => why.push(format!("node {source}: {e}")),
            }
        }
        Err(fail(if why.is_empty() {
            "no node holds it".into()
        } else {
            format!("{}; no other node holds it", why.join("; "))
        }))
    }

    /// The whole of an artifact kept by another worker, fetched over the mesh in chunks.
    pub async fn fetch_artifact(
        &self,
        worker: NodeId,
        task: testmesh_consensus::TaskId,
        attempt: u32,
        path: &str,
    ) -> Result<Vec<u8>, String> {
        let (Some(mesh), Some(peer)) = (&self.mesh, self.writer.peer_of(worker)) else {
            return Err(format!(
                "worker {worker} that keeps this artifact is not reachable; its artifacts come back with it"
            ));
        };
        let mut out = Vec::new();
        loop {
            let req = Request::Artifact {
                task: task.0,
                attempt,
                path: path.to_string(),
                offset: out.len() as u64,
                limit: CHUNK,
            };
            match mesh.request(peer, req, CHUNK_TIMEOUT).await {
                Ok(Response::Artifact(Ok((bytes, len)))) => {
                    let done = bytes.is_empty();
                    out.extend_from_slice(&bytes);
                    if done || out.len() as u64 >= len {
                        return Ok(out);
                    }
                }
                Ok(Response::Artifact(Err(e))) => return Err(format!("worker {worker}: {e}")),
                Ok(_) => return Err(format!("worker {worker} gave an unexpected answer")),
                Err(e) => {
                    return Err(format!(
                        "cannot fetch the artifact from worker {worker}: {e}"
                    ));
                }
            }
        }
    }

    /// Removes the least recently used archives until the cache is within its bound
    /// (`keep` stays whatever its size).
    pub fn evict(&self, keep: Option<&str>) {
        let mut keep_set = self.in_use();
        keep_set.extend(keep.map(str::to_string));
        let gone = evict_in(
            &self.dir,
            self.max_bytes.load(Ordering::Relaxed),
            &keep_set,
            self.clock.now(),
        );
        if !gone.is_empty() {
            let mut m = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
            for h in gone {
                if m.get(&h).is_some_and(|l| Arc::strong_count(l) == 1) {
                    m.remove(&h);
                }
            }
        }
    }
}

/// Writes `body` to `<dir>/<hash>.tar.gz` if its SHA-256 is `hash` and it is at most `max`
/// bytes; nothing is left behind otherwise.
pub fn store(dir: &Path, hash: &str, body: &mut dyn Read, max: u64) -> Result<u64, CodeError> {
    valid_hash(hash).map_err(CodeError::Io)?;
    std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
    let tmp = dir.join(format!(
        "{hash}.upload-{}",
        hex::encode(rand::random::<[u8; 6]>())
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("cannot create", &tmp, e))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut n = 0u64;
        loop {
            let k = body
                .read(&mut buf)
                .map_err(|e| CodeError::Io(format!("reading the upload: {e}")))?;
            if k == 0 {
                break;
            }
            n += k as u64;
            if n > max {
                return Err(CodeError::TooLarge { max });
            }
            h.update(&buf[..k]);
            f.write_all(&buf[..k])
                .map_err(|e| io("cannot write", &tmp, e))?;
        }
        let got = hex::encode(h.finalize());
        if got != hash {
            return Err(CodeError::HashMismatch {
                want: hash.to_string(),
                got,
            });
        }
        f.sync_all().map_err(|e| io("cannot sync", &tmp, e))?;
        std::fs::rename(&tmp, dir.join(format!("{hash}.tar.gz")))
            .map_err(|e| io("cannot rename", &tmp, e))?;
        Ok(n)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Partial downloads older than this are given up (a fetch resumes within minutes).
const PART_MAX_AGE: Duration = Duration::from_secs(3600);

/// Removes the least recently used archives of `dir` until they take at most `max` bytes,
/// sparing those in `keep`, and partial downloads left for over an hour; returns the hashes
/// of the archives removed.
pub fn evict_in(
    dir: &Path,
    max: u64,
    keep: &std::collections::HashSet<String>,
    now: testmesh_consensus::UnixMillis,
) -> Vec<String> {
    let mut gone = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return gone;
    };
    let now = std::time::UNIX_EPOCH + Duration::from_millis(now.0);
    let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(m) = e.metadata().ok() else { continue };
        let Ok(modified) = m.modified() else { continue };
        if name.ends_with(".part")
            && now.duration_since(modified).unwrap_or_default() > PART_MAX_AGE
        {
            let _ = std::fs::remove_file(e.path());
        } else if name.ends_with(".tar.gz") {
            files.push((modified, m.len(), e.path()));
        }
    }
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    for (_, len, p) in files {
        if total <= max {
            break;
        }
        let hash = p
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".tar.gz").to_string())
            .unwrap_or_default();
        if keep.contains(&hash) {
            continue;
        }
        if std::fs::remove_file(&p).is_ok() {
            tracing::debug!("code cache: evicted {}", p.display());
            total -= len;
            gone.push(hash);
        }
    }
    gone
}

/// Why a chunk did not come.
#[derive(Debug)]
pub enum Chunk {
    /// Worth trying again (a timeout, a dropped connection).
    Transient(String),
    /// The source does not hold the archive, or refuses.
    Refused(String),
}

/// Downloads `code` into `<dir>/<hash>.part` chunk by chunk from `chunk(offset)` (which returns
/// bytes and the whole length), resuming what an earlier download left there, trying a chunk
/// [`TRIES`] times; checks the hash and renames it into place. A partial download is kept for
/// the next try, a damaged one removed.
pub async fn download<F, Fut>(
    dir: &Path,
    code: &CodeRef,
    fetched: &AtomicU64,
    mut chunk: F,
) -> Result<(), CodeError>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<u8>, u64), Chunk>>,
{
    let fail = |why: String| CodeError::Fetch {
        hash: code.hash.clone(),
        origin: code.origin,
        why,
    };
    std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
    let part = dir.join(format!("{}.part", code.hash));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)
        .map_err(|e| io("cannot open", &part, e))?;
    let mut have = f.metadata().map_err(|e| io("cannot stat", &part, e))?.len();
    if have > code.size {
        f.set_len(0).map_err(|e| io("cannot truncate", &part, e))?;
        have = 0;
    }
    while have < code.size {
        let mut tries = 0;
        let (bytes, total) = loop {
            match chunk(have).await {
                Ok(r) => break r,
                Err(Chunk::Refused(e)) => return Err(fail(e)),
                Err(Chunk::Transient(e)) if tries + 1 < TRIES => {
                    tries += 1;
                    tracing::debug!("fetching {} at {have}: {e}; trying again", code.hash);
                    tokio::time::sleep(Duration::from_millis(100 << tries)).await;
                }
                Err(Chunk::Transient(e)) => {
                    return Err(fail(format!(
                        "{e} (after {TRIES} tries; {have} of {} bytes kept for the next try)",
                        code.size
                    )));
                }
            }
        };
        if total != code.size || bytes.is_empty() {
            return Err(fail(format!(
                "it holds {total} bytes where the task says {}",
                code.size
            )));
        }
        f.write_all(&bytes)
            .map_err(|e| io("cannot write", &part, e))?;
        have += bytes.len() as u64;
        fetched.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    }
    drop(f);
    let got = {
        let p = part.clone();
        tokio::task::spawn_blocking(move || hash_file(&p))
            .await
            .map_err(|e| CodeError::Io(e.to_string()))?
            .map_err(|e| io("cannot read", &part, e))?
    };
    if got != code.hash {
        let _ = std::fs::remove_file(&part);
        return Err(CodeError::HashMismatch {
            want: code.hash.clone(),
            got,
        });
    }
    std::fs::rename(&part, dir.join(format!("{}.tar.gz", code.hash)))
        .map_err(|e| io("cannot rename", &part, e))
}

/// Marks an archive used (the cache evicts by modification time).
fn touch(p: &Path, now: testmesh_consensus::UnixMillis) {
    if let Ok(f) = std::fs::File::options().append(true).open(p) {
        let _ = f.set_modified(std::time::UNIX_EPOCH + Duration::from_millis(now.0));
    }
}

pub fn valid_hash(h: &str) -> Result<(), String> {
    if h.len() == 64
        && h.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a code hash (64 lowercase hex digits of a SHA-256)",
            testmesh_consensus::limits::cut(h, 80)
        ))
    }
}

pub fn hash_file(p: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Unpacks an archive into `dest` (created); entries that would land outside it are refused
/// by the tar reader.
pub fn unpack(archive: &Path, dest: &Path) -> Result<(), CodeError> {
    std::fs::create_dir_all(dest).map_err(|e| io("cannot create", dest, e))?;
    let f = std::fs::File::open(archive).map_err(|e| io("cannot open", archive, e))?;
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(f)));
    a.set_preserve_permissions(true);
    a.set_preserve_mtime(true);
    a.unpack(dest)
        .map_err(|e| CodeError::Io(format!("cannot unpack {}: {e}", archive.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn code_of(bytes: &[u8]) -> CodeRef {
        CodeRef {
            hash: hex::encode(Sha256::digest(bytes)),
            size: bytes.len() as u64,
            origin: NodeId(1),
        }
    }

    /// The offsets a test server was asked for.
    type Asked = Arc<Mutex<Vec<u64>>>;
    /// One chunk as a test server answers it.
    type Served = std::future::Ready<Result<(Vec<u8>, u64), Chunk>>;

    /// Serves `data` in chunks; `fail(call, offset)` decides which calls fail and how.
    fn server(
        data: Vec<u8>,
        fail: impl Fn(usize, u64) -> Option<Chunk> + Clone,
    ) -> (impl FnMut(u64) -> Served, Asked) {
        let calls = Arc::new(AtomicUsize::new(0));
        let offsets = Arc::new(Mutex::new(Vec::new()));
        let seen = offsets.clone();
        let f = move |offset: u64| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            seen.lock().unwrap().push(offset);
            if let Some(e) = fail(n, offset) {
                return std::future::ready(Err(e));
            }
            let start = offset as usize;
            let end = (start + CHUNK as usize).min(data.len());
            std::future::ready(Ok((data[start..end].to_vec(), data.len() as u64)))
        };
        (f, offsets)
    }

    #[tokio::test]
    async fn a_download_survives_hiccups_resumes_after_a_failure_and_checks_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(10u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
        let code = code_of(&data);
        let n = AtomicU64::new(0);
        // Two dropped requests on the second chunk: tried again, finished.
        let (f, _) = server(data.clone(), |call, _| {
            (call == 1 || call == 2).then(|| Chunk::Transient("dropped".into()))
        });
        download(dir.path(), &code, &n, f).await.unwrap();
        let done = dir.path().join(format!("{}.tar.gz", code.hash));
        assert_eq!(std::fs::read(&done).unwrap(), data);
        std::fs::remove_file(&done).unwrap();

        // The source goes away after one chunk: the part is kept...
        let (f, _) = server(data.clone(), |_, offset| {
            (offset > 0).then(|| Chunk::Transient("gone".into()))
        });
        let e = download(dir.path(), &code, &n, f).await.unwrap_err();
        assert!(e.to_string().contains("kept for the next try"), "{e}");
        let part = dir.path().join(format!("{}.part", code.hash));
        assert_eq!(std::fs::metadata(&part).unwrap().len(), CHUNK);
        // ...and the next download (any source) starts where it stopped.
        let (f, offsets) = server(data.clone(), |_, _| None);
        download(dir.path(), &code, &n, f).await.unwrap();
        assert_eq!(offsets.lock().unwrap()[0], CHUNK, "resumed");
        assert_eq!(std::fs::read(&done).unwrap(), data);
        assert!(!part.exists());
        std::fs::remove_file(&done).unwrap();

        // Damaged bytes: refused, nothing kept.
        let mut bad = data.clone();
        bad[5] ^= 1;
        let (f, _) = server(bad, |_, _| None);
        let e = download(dir.path(), &code, &n, f).await.unwrap_err();
        assert!(matches!(e, CodeError::HashMismatch { .. }), "{e}");
        assert!(!part.exists() && !done.exists());

        // A source that does not hold it says so at once.
        let (f, offsets) = server(data.clone(), |_, _| Some(Chunk::Refused("not here".into())));
        assert!(download(dir.path(), &code, &n, f).await.is_err());
        assert_eq!(offsets.lock().unwrap().len(), 1);
    }

    #[test]
    fn uploads_are_checked_and_the_cache_keeps_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let a = vec![1u8; 3000];
        let ha = hex::encode(Sha256::digest(&a));
        assert!(matches!(
            store(d, &ha, &mut &a[..], 100),
            Err(CodeError::TooLarge { .. })
        ));
        let wrong = hex::encode(Sha256::digest(b"other"));
        assert!(matches!(
            store(d, &wrong, &mut &a[..], 1 << 20),
            Err(CodeError::HashMismatch { .. })
        ));
        assert!(store(d, "../../x", &mut &a[..], 1 << 20).is_err());
        assert_eq!(store(d, &ha, &mut &a[..], 1 << 20).unwrap(), 3000);
        // Nothing but the archive is left behind.
        let names: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // Two more: the oldest goes first when the bound is passed; the one just used stays.
        let b = vec![2u8; 3000];
        let hb = hex::encode(Sha256::digest(&b));
        store(d, &hb, &mut &b[..], 1 << 20).unwrap();
        let old = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000);
        std::fs::File::options()
            .append(true)
            .open(d.join(format!("{ha}.tar.gz")))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let keep: std::collections::HashSet<String> = [hb.clone()].into();
        let now = testmesh_consensus::UnixMillis(2_000_000_000_000);
        assert_eq!(evict_in(d, 4000, &keep, now), vec![ha.clone()]);
        assert!(
            !d.join(format!("{ha}.tar.gz")).exists(),
            "least recently used evicted"
        );
        assert!(d.join(format!("{hb}.tar.gz")).exists());
        assert!(evict_in(d, 10, &keep, now).is_empty());
        // A partial download left for long is given up.
        std::fs::write(d.join(format!("{ha}.part")), b"x").unwrap();
        std::fs::File::options()
            .append(true)
            .open(d.join(format!("{ha}.part")))
            .unwrap()
            .set_modified(old)
            .unwrap();
        evict_in(d, 1 << 30, &keep, now);
        assert!(!d.join(format!("{ha}.part")).exists());
        assert!(
            d.join(format!("{hb}.tar.gz")).exists(),
            "the one in use stays"
        );
        assert!(valid_hash(&"A".repeat(64)).is_err());
    }
}
