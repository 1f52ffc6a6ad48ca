//! Files that appear whole or not at all.
//!
//! An [`AtomicFile`] is written where nobody can see it and linked into place by
//! [`AtomicFile::commit`]; dropped uncommitted, it leaves nothing. On Linux the file is created
//! unnamed (`O_TMPFILE` in the target's directory) and given its name by `linkat` at commit, so
//! even a process killed by SIGKILL leaves no temporary file behind. Where the filesystem has
//! no `O_TMPFILE` (or `/proc` is missing) a named temporary file beside the target is used
//! instead; every such name is registered until it is renamed or removed, and
//! [`remove_temporaries`] deletes them all (what a binary's SIGINT/SIGTERM handler calls before
//! the process dies). Replacing an existing file also passes through a registered name for the
//! instant between `linkat` and `rename`.
//!
//! With `durable`, commit fsyncs the file before it gets its name and the directory after, so
//! that after a crash the name holds either the old file or the whole new one.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Named temporary files that exist right now, and whether the process is leaving. A plain
/// std mutex: a process-wide list touched once per file created or committed, never while
/// other work waits on it.
static PENDING: std::sync::Mutex<Pending> = std::sync::Mutex::new(Pending { paths: Vec::new(), closed: false });
static COUNTER: AtomicU64 = AtomicU64::new(0);

struct Pending {
    paths: Vec<PathBuf>,
    /// Set by [`remove_temporaries`]: no named file may appear after it.
    closed: bool,
}

fn pending() -> std::sync::MutexGuard<'static, Pending> {
    PENDING.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Makes the file at `path` (`make`) and registers it, as one step under the lock, so that
/// [`remove_temporaries`] sees either no file or a registered one. Refused once the process
/// is leaving: other threads keep working while the signal handler's thread cleans up.
fn create_registered<T>(path: &Path, make: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let mut pending = pending();
    if pending.closed {
        return Err(io::Error::new(io::ErrorKind::Interrupted, "the process is exiting"));
    }
    let made = make()?;
    pending.paths.push(path.to_owned());
    Ok(made)
}

fn unregister(path: &Path) {
    pending().paths.retain(|p| p != path);
}

/// Removes every named temporary file this process has not yet renamed or removed, and
/// refuses new ones from then on.
///
/// For a signal handler's thread: after it, the process may exit without leaving litter.
/// Unnamed (`O_TMPFILE`) files need nothing: the kernel frees them when the process ends.
pub fn remove_temporaries() {
    let mut pending = pending();
    pending.closed = true;
    for path in pending.paths.drain(..) {
        let _ = fs::remove_file(path);
    }
}

/// How [`AtomicFile::commit`] treats a file already at the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Replace it (atomically: the name holds the old file or the new one).
    Replace,
    /// Keep it and fail with [`io::ErrorKind::AlreadyExists`] (checked by the kernel at the
    /// moment the name is made, so no race can clobber a file created meanwhile).
    Keep,
}

/// A file written out of sight and put in place whole. See the [module docs](self).
#[derive(Debug)]
pub struct AtomicFile {
    file: File,
    target: PathBuf,
    /// The named temporary file, where `O_TMPFILE` could not be used.
    named: Option<PathBuf>,
}

fn dir_of(target: &Path) -> &Path {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A fresh name beside `target` that no other process or call of this one uses.
fn temp_name(target: &Path) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let base = target.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    dir_of(target).join(format!(".{base}.hde-tmp.{}.{n}", std::process::id()))
}

impl AtomicFile {
    /// Starts a file that [`commit`](Self::commit) will put at `target` (read and write, so a
    /// writer can copy between its own parts).
    pub fn create(target: &Path) -> io::Result<Self> {
        #[cfg(target_os = "linux")]
        if let Some(file) = unnamed_in(dir_of(target))? {
            return Ok(AtomicFile { file, target: target.to_owned(), named: None });
        }
        Self::create_named(target)
    }

    /// [`create`](Self::create) with a named temporary file, whatever the filesystem offers.
    pub fn create_named(target: &Path) -> io::Result<Self> {
        let tmp = temp_name(target);
        let file =
            create_registered(&tmp, || fs::OpenOptions::new().read(true).write(true).create_new(true).open(&tmp))?;
        Ok(AtomicFile { file, target: target.to_owned(), named: Some(tmp) })
    }

    /// The file being written.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether the file is unnamed until commit (`O_TMPFILE`).
    pub fn is_unnamed(&self) -> bool {
        self.named.is_none()
    }

    /// Gives the file its name. With `durable`, the data is fsynced first and the directory
    /// after. On error nothing is left at a temporary name and the target is as it was.
    pub fn commit(mut self, existing: Existing, durable: bool) -> io::Result<()> {
        if durable {
            self.file.sync_all()?;
        }
        match self.named.take() {
            Some(tmp) => {
                let result = match existing {
                    Existing::Replace => fs::rename(&tmp, &self.target),
                    Existing::Keep => keep_link(&tmp, &self.target),
                };
                let _ = fs::remove_file(&tmp);
                unregister(&tmp);
                result?;
            }
            None => self.link_unnamed(existing)?,
        }
        if durable {
            File::open(dir_of(&self.target))?.sync_all()?;
        }
        Ok(())
    }

    #[cfg(target_os = "linux")]
    fn link_unnamed(&self, existing: Existing) -> io::Result<()> {
        match existing {
            Existing::Keep => link_fd(&self.file, &self.target),
            Existing::Replace => {
                let tmp = temp_name(&self.target);
                let result =
                    create_registered(&tmp, || link_fd(&self.file, &tmp)).and_then(|()| fs::rename(&tmp, &self.target));
                if result.is_err() {
                    let _ = fs::remove_file(&tmp);
                }
                unregister(&tmp);
                result
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn link_unnamed(&self, _existing: Existing) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "unnamed files exist on Linux only"))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let Some(tmp) = self.named.take() {
            let _ = fs::remove_file(&tmp);
            unregister(&tmp);
        }
    }
}

/// Puts `tmp` at `target` unless something is there: a hard link fails with `AlreadyExists`
/// atomically; a filesystem without hard links gets a check and a rename.
fn keep_link(tmp: &Path, target: &Path) -> io::Result<()> {
    match fs::hard_link(tmp, target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
        Err(_) if fs::symlink_metadata(target).is_ok() => {
            Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"))
        }
        Err(_) => fs::rename(tmp, target),
    }
}

/// An unnamed file in `dir`, or `None` where the filesystem or kernel cannot make one or
/// `/proc` is missing to name it later.
#[cfg(target_os = "linux")]
fn unnamed_in(dir: &Path) -> io::Result<Option<File>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if !Path::new("/proc/self/fd").is_dir() {
        return Ok(None);
    }
    match fs::OpenOptions::new().read(true).write(true).mode(0o666).custom_flags(libc::O_TMPFILE).open(dir) {
        Ok(file) => Ok(Some(file)),
        // Not supported by this filesystem or kernel: fall back to a name.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Links the unnamed `file` at `target` (fails with `AlreadyExists` if the name is taken).
#[cfg(target_os = "linux")]
fn link_fd(file: &File, target: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::io::AsRawFd as _;
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "descriptor path"))?;
    let to = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: both pointers are to NUL-terminated strings that outlive the call; linkat reads
    // them and keeps nothing.
    let rc =
        unsafe { libc::linkat(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An image read from a file by [`open_image`].
#[derive(Debug, Clone)]
pub struct ImageFile {
    /// The bytes.
    pub image: hde_delta::Image,
    /// The file's holes, where it has any: zero bytes that were not read, for
    /// [`EncodeOptions::known_zero`](hde_delta::EncodeOptions::known_zero).
    pub holes: Option<hde_delta::ZeroRanges>,
    /// The bytes are the file mapped (else they were read into memory: a pipe, a device).
    pub mapped: bool,
}

/// An image's bytes from `path`: a non-empty regular file mapped (no copy through a read
/// buffer), anything else (a pipe, a device) read.
///
/// A file without holes is mapped with every page populated up front. A sparse file (a disk
/// image, a memory file that was never written in full) is mapped lazily: only its data is
/// read ahead, and its holes, found with `SEEK_DATA`/`SEEK_HOLE`, are returned so that the
/// encoder never touches them: a 32 GiB file holding 512 MiB of data costs the time and
/// page cache of 512 MiB.
///
/// A file changed by another process while mapped changes the bytes under the caller; frames
/// carry checksums, so the result is a typed error at the receiver, as with any input changed
/// mid-read. A file whose holes are filled while it is encoded breaks the [`ZeroRanges`]
/// contract in the same way the bytes would change under a reader.
///
/// [`ZeroRanges`]: hde_delta::ZeroRanges
pub fn open_image(path: &Path) -> io::Result<ImageFile> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if meta.is_file() && meta.len() > 0 {
        let holes = holes(&file, meta.len()).ok().flatten();
        let mut options = memmap2::MmapOptions::new();
        if holes.is_none() {
            options.populate();
        }
        // SAFETY: a read-only private map; see above for a file changed while mapped.
        if let Ok(map) = unsafe { options.map(&file) } {
            if let Some(holes) = &holes {
                read_ahead_data(&map, holes);
            }
            let image = hde_delta::Image::shared(std::sync::Arc::new(map));
            return Ok(ImageFile { image, holes, mapped: true });
        }
    }
    if meta.is_file() {
        // `holes` moved the offset.
        io::Seek::seek(&mut &file, io::SeekFrom::Start(0))?;
    }
    let mut data = Vec::new();
    io::Read::read_to_end(&mut &file, &mut data)?;
    Ok(ImageFile { image: data.into(), holes: None, mapped: false })
}

/// `file` mapped read-only and private, for a baseline this process restores or has just
/// written; `populate` reads every page in at once (for a file about to be read whole). As
/// with [`open_image`], a file another process changes while mapped changes the bytes; callers
/// check them against hashes or the image checksum.
pub fn map_whole(file: &File, populate: bool) -> io::Result<hde_delta::Image> {
    let mut options = memmap2::MmapOptions::new();
    if populate {
        options.populate();
    }
    // SAFETY: a read-only private map of a file the caller holds open; see above for a file
    // changed while mapped.
    let map = unsafe { options.map(file) }?;
    Ok(hde_delta::Image::shared(std::sync::Arc::new(map)))
}

/// [`open_image`]'s bytes only.
pub fn read_image(path: &Path) -> io::Result<hde_delta::Image> {
    open_image(path).map(|f| f.image)
}

/// The holes of `file` (of length `len`), or `None` where it has none or the file system
/// cannot tell (then every byte is read).
#[cfg(target_os = "linux")]
pub fn holes(file: &File, len: u64) -> io::Result<Option<hde_delta::ZeroRanges>> {
    use std::os::unix::io::AsRawFd as _;
    let fd = file.as_raw_fd();
    let seek = |offset: u64, whence: libc::c_int| -> io::Result<Option<u64>> {
        let Ok(offset) = libc::off_t::try_from(offset) else { return Ok(None) };
        // SAFETY: lseek on a descriptor this function borrows; it moves the file offset,
        // which nothing else here relies on (the map and later reads use explicit offsets).
        let at = unsafe { libc::lseek(fd, offset, whence) };
        if at >= 0 {
            return Ok(u64::try_from(at).ok());
        }
        let err = io::Error::last_os_error();
        // ENXIO: no data (or hole) at or after `offset`.
        if err.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(err)
        }
    };
    let mut holes = Vec::new();
    let mut at = 0u64;
    while at < len {
        let data = seek(at, libc::SEEK_DATA)?.unwrap_or(len).min(len);
        if data > at {
            holes.push(at..data);
        }
        if data >= len {
            break;
        }
        at = seek(data, libc::SEEK_HOLE)?.unwrap_or(len).max(data + 1);
    }
    let holes = hde_delta::ZeroRanges::new(holes);
    Ok((holes.bytes() > 0).then_some(holes))
}

/// The holes of `file`: none known on this system.
#[cfg(not(target_os = "linux"))]
pub fn holes(_file: &File, _len: u64) -> io::Result<Option<hde_delta::ZeroRanges>> {
    Ok(None)
}

/// Maps the data parts of a lazily mapped sparse file up front (or has them read ahead).
fn read_ahead_data(map: &memmap2::Mmap, holes: &hde_delta::ZeroRanges) {
    let mut at = 0u64;
    let len = map.len() as u64;
    for hole in holes.ranges().iter().cloned().chain(std::iter::once(len..len)) {
        if hole.start > at {
            // Mapped now in one call per range, as `populate` does for a whole file (Linux
            // 5.14); read ahead at least on older kernels. Advice only: a failure costs page
            // faults later, nothing else.
            let (from, len) = (at as usize, (hole.start - at) as usize);
            #[cfg(target_os = "linux")]
            let populated = map.advise_range(memmap2::Advice::PopulateRead, from, len).is_ok();
            #[cfg(not(target_os = "linux"))]
            let populated = false;
            if !populated {
                let _ = map.advise_range(memmap2::Advice::WillNeed, from, len);
            }
        }
        at = hole.end;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hde-fsio-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn a_sparse_file_is_mapped_with_its_holes() {
        use std::os::unix::fs::FileExt as _;
        let d = dir("holes");
        let path = d.join("sparse");
        let f = File::create(&path).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[7u8; 8192], 16 << 20).unwrap();
        f.write_all_at(&[9u8; 100], (64 << 20) - 100).unwrap();
        drop(f);
        let read = open_image(&path).unwrap();
        assert!(read.mapped);
        assert_eq!(read.image.len(), 64 << 20);
        assert_eq!(read.image[16 << 20], 7);
        match read.holes {
            // A file system that keeps holes: they cover everything but the two writes' blocks.
            Some(holes) => {
                assert!(holes.covers(0..16 << 20) && !holes.covers((16 << 20)..(16 << 20) + 1));
                assert!(holes.covers((32 << 20)..(60 << 20)) && !holes.covers((64 << 20) - 1..64 << 20));
                for r in holes.ranges() {
                    assert!(read.image[r.start as usize..r.end as usize].iter().all(|&b| b == 0));
                }
            }
            None => eprintln!("{} keeps no holes: nothing more to check", d.display()),
        }
        // A file without holes has none, and a pipe-like read of it gives the same bytes.
        let dense = d.join("dense");
        fs::write(&dense, vec![1u8; 10_000]).unwrap();
        let read = open_image(&dense).unwrap();
        assert_eq!((read.holes, read.image.len()), (None, 10_000));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn both_kinds_commit_replace_keep_and_leave_nothing_behind() {
        let d = dir("kinds");
        let target = d.join("out");
        for named in [false, true] {
            let _ = fs::remove_file(&target);
            let create = |t: &Path| if named { AtomicFile::create_named(t) } else { AtomicFile::create(t) };
            let a = create(&target).unwrap();
            a.file().write_all(b"one").unwrap();
            drop(a);
            assert!(names(&d).is_empty(), "named={named}: {:?}", names(&d));
            let a = create(&target).unwrap();
            a.file().write_all(b"one").unwrap();
            a.commit(Existing::Keep, true).unwrap();
            assert_eq!(fs::read(&target).unwrap(), b"one");
            let a = create(&target).unwrap();
            a.file().write_all(b"two").unwrap();
            let err = a.commit(Existing::Keep, false).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
            assert_eq!(fs::read(&target).unwrap(), b"one");
            let a = create(&target).unwrap();
            a.file().write_all(b"three").unwrap();
            a.commit(Existing::Replace, false).unwrap();
            assert_eq!(fs::read(&target).unwrap(), b"three");
            assert_eq!(names(&d), ["out"], "named={named}");
        }
        // What a signal handler's cleanup does is process-wide: tests/exiting.rs.
        let _ = fs::remove_dir_all(&d);
    }
}
