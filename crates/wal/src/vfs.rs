//! The storage seam: the few file operations the log needs, so tests can swap the disk.
//!
//! Modelled on redb's `StorageBackend`: positional `read`/`write`, `set_len`, `sync_data`, plus
//! the directory operations snapshots and segment rotation need. [`RealVfs`] is `std::fs`;
//! [`MemVfs`] is an in-memory disk that remembers what was synced, can [`MemVfs::crash`] (keeping
//! any prefix of the unsynced writes) and can inject I/O errors on a countdown.
//!
//! The crash model: file data becomes durable at `sync_data`; directory operations (create,
//! rename, remove) are durable at once. The log never depends on an unsynced directory entry
//! for anything acknowledged — it syncs the directory after creating a segment and after
//! renaming a snapshot — so treating them as immediate hides no bug in the log's own ordering.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// One open file.
pub trait VFile: Send + Sync + Debug {
    /// Current length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Fills `buf` from `offset`; fails with `UnexpectedEof` if the file is shorter.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`, extending the file if needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
}

/// A file system: the directory operations, and opening files.
pub trait Vfs: Send + Sync + Debug {
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Paths of the regular files directly in `dir`, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Creates `path` empty (truncating an existing file) and opens it for reading and writing.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn VFile>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn VFile>>;
    /// Deletes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Atomically renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealVfs;

#[derive(Debug)]
struct RealFile(std::fs::File);

impl VFile for RealFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.0, buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.0, buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl Vfs for RealVfs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                out.push(entry.path());
            }
        }
        out.sort();
        Ok(out)
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn VFile>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Arc::new(RealFile(f)))
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn VFile>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(Arc::new(RealFile(f)))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

/// An in-memory disk for crash and fault tests.
///
/// Clones share the same disk. [`MemVfs::crash`] returns a *new* disk holding what would
/// survive a power cut; the old one (and any log still using it) is left behind.
#[derive(Debug, Clone, Default)]
pub struct MemVfs {
    inner: Arc<Mutex<MemDisk>>,
}

#[derive(Debug, Default)]
struct MemDisk {
    files: BTreeMap<PathBuf, Arc<Mutex<MemFileData>>>,
    /// Successful writes left before writes start failing (`None`: never fail).
    writes_until_failure: Option<u64>,
    /// Successful syncs left before syncs start failing.
    syncs_until_failure: Option<u64>,
    /// Successful `sync_data` calls so far.
    syncs: u64,
}

#[derive(Debug, Default, Clone)]
struct MemFileData {
    /// What a reader sees now.
    data: Vec<u8>,
    /// The image as of the last `sync_data`.
    durable: Vec<u8>,
}

#[derive(Debug)]
struct MemFile {
    disk: Arc<Mutex<MemDisk>>,
    file: Arc<Mutex<MemFileData>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a test disk's lock already failed the test; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} failure"))
}

impl MemFile {
    fn take_budget(&self, sync: bool) -> io::Result<()> {
        let mut disk = lock(&self.disk);
        let budget = if sync {
            &mut disk.syncs_until_failure
        } else {
            &mut disk.writes_until_failure
        };
        match budget {
            Some(0) => return Err(injected(if sync { "sync" } else { "write" })),
            Some(n) => *n -= 1,
            None => {}
        }
        if sync {
            disk.syncs += 1;
        }
        Ok(())
    }
}

impl VFile for MemFile {
    fn size(&self) -> io::Result<u64> {
        Ok(lock(&self.file).data.len() as u64)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let f = lock(&self.file);
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start.checked_add(buf.len()).filter(|&e| e <= f.data.len());
        let Some(end) = end else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past end of file",
            ));
        };
        buf.copy_from_slice(&f.data[start..end]);
        Ok(())
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.take_budget(false)?;
        let mut f = lock(&self.file);
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start + buf.len();
        if f.data.len() < end {
            f.data.resize(end, 0);
        }
        f.data[start..end].copy_from_slice(buf);
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        lock(&self.file).data.resize(len, 0);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.take_budget(true)?;
        let mut f = lock(&self.file);
        f.durable = f.data.clone();
        Ok(())
    }
}

impl MemVfs {
    /// An empty disk.
    pub fn new() -> MemVfs {
        MemVfs::default()
    }

    /// After `n` more successful writes, every write fails (until [`MemVfs::clear_faults`]).
    pub fn fail_writes_after(&self, n: u64) {
        lock(&self.inner).writes_until_failure = Some(n);
    }

    /// After `n` more successful syncs, every sync fails. The unsynced data stays in the
    /// file, as it may on a real disk: it may or may not survive a crash.
    pub fn fail_syncs_after(&self, n: u64) {
        lock(&self.inner).syncs_until_failure = Some(n);
    }

    /// Successful file syncs so far (group-commit tests count them).
    pub fn sync_count(&self) -> u64 {
        lock(&self.inner).syncs
    }

    /// Stops injecting faults.
    pub fn clear_faults(&self) {
        let mut disk = lock(&self.inner);
        disk.writes_until_failure = None;
        disk.syncs_until_failure = None;
    }

    /// A power cut. Returns the disk as it would be found afterwards: every file keeps its
    /// synced image plus a prefix of the bytes appended since; `keep_unsynced(path, n)` is asked
    /// how many of the `n` unsynced appended bytes survive (return `0` to drop them all, `n`
    /// to keep them all, anything between for a torn write). Files changed other than by
    /// appending since their last sync revert to their synced image.
    pub fn crash(&self, mut keep_unsynced: impl FnMut(&Path, u64) -> u64) -> MemVfs {
        let disk = lock(&self.inner);
        let mut files = BTreeMap::new();
        for (path, file) in &disk.files {
            let f = lock(file);
            let appended_only =
                f.data.len() >= f.durable.len() && f.data[..f.durable.len()] == f.durable[..];
            let image = if appended_only && f.data.len() > f.durable.len() {
                let unsynced = (f.data.len() - f.durable.len()) as u64;
                let keep = keep_unsynced(path, unsynced).min(unsynced) as usize;
                f.data[..f.durable.len() + keep].to_vec()
            } else {
                f.durable.clone()
            };
            let data = MemFileData {
                data: image.clone(),
                durable: image,
            };
            files.insert(path.clone(), Arc::new(Mutex::new(data)));
        }
        MemVfs {
            inner: Arc::new(Mutex::new(MemDisk {
                files,
                ..Default::default()
            })),
        }
    }

    /// A copy of a file's current contents (for tests that damage files).
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        lock(&self.inner)
            .files
            .get(path)
            .map(|f| lock(f).data.clone())
    }

    /// Replaces a file's contents, durably (for tests that damage files).
    pub fn write_file(&self, path: &Path, data: Vec<u8>) {
        let file = MemFileData {
            data: data.clone(),
            durable: data,
        };
        lock(&self.inner)
            .files
            .insert(path.to_path_buf(), Arc::new(Mutex::new(file)));
    }

    fn handle(&self, file: Arc<Mutex<MemFileData>>) -> Arc<dyn VFile> {
        Arc::new(MemFile {
            disk: self.inner.clone(),
            file,
        })
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl Vfs for MemVfs {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        // Directories are implicit: a file's parent exists while it has files.
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let disk = lock(&self.inner);
        Ok(disk
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn VFile>> {
        let file = Arc::new(Mutex::new(MemFileData::default()));
        lock(&self.inner)
            .files
            .insert(path.to_path_buf(), file.clone());
        Ok(self.handle(file))
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn VFile>> {
        let file = lock(&self.inner)
            .files
            .get(path)
            .cloned()
            .ok_or_else(|| not_found(path))?;
        Ok(self.handle(file))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        lock(&self.inner)
            .files
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut disk = lock(&self.inner);
        let file = disk.files.remove(from).ok_or_else(|| not_found(from))?;
        disk.files.insert(to.to_path_buf(), file);
        Ok(())
    }
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_synced_data_and_a_chosen_prefix_of_unsynced_appends() {
        let vfs = MemVfs::new();
        let f = vfs.create(Path::new("/d/a")).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(b" world", 5).unwrap();
        let dropped = vfs.crash(|_, _| 0);
        assert_eq!(dropped.read_file(Path::new("/d/a")).unwrap(), b"hello");
        let torn = vfs.crash(|_, n| n / 2);
        assert_eq!(torn.read_file(Path::new("/d/a")).unwrap(), b"hello wo");
    }

    #[test]
    fn injected_sync_failure_leaves_data_unsynced() {
        let vfs = MemVfs::new();
        let f = vfs.create(Path::new("/d/a")).unwrap();
        vfs.fail_syncs_after(0);
        f.write_all_at(b"x", 0).unwrap();
        assert!(f.sync_data().is_err());
        assert_eq!(
            vfs.crash(|_, _| 0).read_file(Path::new("/d/a")).unwrap(),
            b""
        );
    }
}
