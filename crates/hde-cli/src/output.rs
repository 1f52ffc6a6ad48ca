//! Where a command's result goes, and the care it takes not to destroy anything on the way.
//!
//! * `-`: stdout, written in order.
//! * A block or character device or a FIFO (`/dev/vg/lv`, `/dev/null`, a named pipe): opened
//!   and written in place, in order, never unlinked or truncated; it may exist without `-f`.
//! * Anything else is a regular file, reached through any symlinks (the link stays, its target
//!   is written): the result is put in place whole through an [`AtomicFile`], fsynced with its
//!   directory when `durable`. An existing file is replaced only with `-f` (as zstd does).
//! * An output that is one of the command's inputs (same device and inode, through any link)
//!   is always refused: encoding a file over itself would destroy it before it was read.

use std::fs::{self, File, Metadata};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use hde_core::fsio::{AtomicFile, Existing};

/// The identity of a file: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(meta: &Metadata) -> Self {
        FileId { dev: meta.dev(), ino: meta.ino() }
    }
}

/// The identities of `paths` that exist (stdin and missing files have none).
pub(crate) fn ids<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Vec<(FileId, &'a Path)> {
    paths
        .into_iter()
        .filter(|p| !is_stdio(p))
        .filter_map(|p| fs::metadata(p).ok().map(|m| (FileId::of(&m), p)))
        .collect()
}

/// `-`: standard input or output.
pub(crate) fn is_stdio(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// The path `path` names once every symlink in its last component is followed (a dangling link
/// gives its target's path, which will be created). At most 40 links, as the kernel allows.
fn resolve_links(path: &Path) -> Result<PathBuf> {
    let mut current = path.to_owned();
    for _ in 0..40 {
        match fs::symlink_metadata(&current) {
            Ok(m) if m.file_type().is_symlink() => {
                let target =
                    fs::read_link(&current).with_context(|| format!("cannot read the link {}", current.display()))?;
                current = match current.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            _ => return Ok(current),
        }
    }
    bail!("{}: too many levels of symbolic links", path.display())
}

enum Sink {
    Stdout,
    /// A device or FIFO, written in place.
    InPlace(File),
    /// A regular file, put in place at commit.
    Atomic {
        file: AtomicFile,
        existing: Existing,
        /// The path it gets (symlinks followed).
        target: PathBuf,
    },
}

/// An opened output. See the [module docs](self).
pub(crate) struct Output {
    /// The path as the user typed it: what every message names.
    path: PathBuf,
    sink: Sink,
}

impl Output {
    /// Opens `path` for a result, refusing what must not be overwritten: an existing file
    /// without `force`, and any of `inputs` whatever `force` says.
    pub(crate) fn open(path: &Path, force: bool, inputs: &[(FileId, &Path)]) -> Result<Output> {
        let owned = path.to_owned();
        if is_stdio(path) {
            return Ok(Output { path: owned, sink: Sink::Stdout });
        }
        let target = resolve_links(path)?;
        let meta = match fs::metadata(&target) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("cannot write {}", path.display())),
        };
        if let Some(meta) = &meta {
            if let Some((_, input)) = inputs.iter().find(|(id, _)| *id == FileId::of(meta)) {
                bail!(
                    "{} is the input {}: refusing to overwrite what is being read (choose another output)",
                    path.display(),
                    input.display()
                );
            }
            let kind = meta.file_type();
            if kind.is_block_device() || kind.is_char_device() || kind.is_fifo() {
                let file = fs::OpenOptions::new()
                    .write(true)
                    .open(&target)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                return Ok(Output { path: owned, sink: Sink::InPlace(file) });
            }
            if kind.is_dir() {
                bail!("{} is a directory", path.display());
            }
            if !kind.is_file() {
                bail!("{} is neither a regular file, a device nor a FIFO", path.display());
            }
            if !force {
                bail!("{} already exists; use -f/--force to overwrite it", path.display());
            }
        }
        // HDE_NAMED_TEMPORARIES=1 takes the path of filesystems without O_TMPFILE (a named
        // temporary file, removed on SIGINT/SIGTERM): for tests, and to rule O_TMPFILE out.
        let file = if std::env::var_os("HDE_NAMED_TEMPORARIES").is_some_and(|v| v == "1") {
            AtomicFile::create_named(&target)
        } else {
            AtomicFile::create(&target)
        };
        let file = file.with_context(|| format!("cannot create {}", path.display()))?;
        if let Some(meta) = &meta {
            // A replaced file keeps its permissions.
            let _ = file.file().set_permissions(meta.permissions());
        }
        let existing = if meta.is_some() { Existing::Replace } else { Existing::Keep };
        Ok(Output { path: owned, sink: Sink::Atomic { file, existing, target } })
    }

    /// The regular file being written, where the output is one (random access, holes).
    pub(crate) fn regular_file(&self) -> Option<&File> {
        match &self.sink {
            Sink::Atomic { file, .. } => Some(file.file()),
            _ => None,
        }
    }

    /// Writes in order through `f`, buffered.
    pub(crate) fn write_with<T>(&mut self, f: impl FnOnce(&mut dyn Write) -> Result<T>) -> Result<T> {
        let name = self.name();
        let flushed = |w: &mut dyn Write| -> Result<T> {
            let value = f(w)?;
            w.flush().with_context(|| format!("cannot write {name}"))?;
            Ok(value)
        };
        match &mut self.sink {
            Sink::Stdout => flushed(&mut BufWriter::with_capacity(1 << 20, io::stdout().lock())),
            Sink::InPlace(file) => flushed(&mut BufWriter::with_capacity(1 << 20, file)),
            Sink::Atomic { file, .. } => flushed(&mut BufWriter::with_capacity(1 << 20, file.file())),
        }
    }

    /// Writes a whole image: as a sparse file (zero blocks left as holes, as `zstd -d` does)
    /// where the output is a regular file, every byte in order elsewhere (a device's old
    /// blocks must be overwritten with the zeros).
    pub(crate) fn write_image(&mut self, image: &[u8]) -> Result<()> {
        if let Some(file) = self.regular_file() {
            return hde_core::state::write_sparse(file, 0, image)
                .with_context(|| format!("cannot write {}", self.path.display()));
        }
        let name = self.name();
        self.write_with(|w| w.write_all(image).with_context(|| format!("cannot write {name}")))
    }

    /// The output as messages name it: the path typed, or "stdout".
    fn name(&self) -> String {
        if is_stdio(&self.path) {
            "stdout".to_owned()
        } else {
            self.path.display().to_string()
        }
    }

    /// The regular file the output becomes (symlinks followed), if it is one.
    pub(crate) fn target(&self) -> Option<&Path> {
        match &self.sink {
            Sink::Atomic { target, .. } => Some(target),
            _ => None,
        }
    }

    /// Finishes the output: a regular file gets its name (fsynced with its directory first if
    /// `durable`); a device is flushed to stable storage if `durable`.
    pub(crate) fn commit(self, durable: bool) -> Result<()> {
        let path = self.path;
        match self.sink {
            Sink::Stdout => Ok(()),
            Sink::InPlace(file) => {
                // A FIFO or character device has nothing to sync (and says so with EINVAL).
                if durable && file.metadata().is_ok_and(|m| m.file_type().is_block_device()) {
                    file.sync_all().with_context(|| format!("cannot write {}", path.display()))?;
                }
                Ok(())
            }
            Sink::Atomic { file, existing, .. } => file.commit(existing, durable).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    anyhow::anyhow!(
                        "{} appeared while this command ran; use -f/--force to overwrite it",
                        path.display()
                    )
                } else {
                    anyhow::Error::new(e).context(format!("cannot write {}", path.display()))
                }
            }),
        }
    }
}
