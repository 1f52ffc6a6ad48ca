//! Baselines kept between processes: a state directory the CLI's `--state` points to.
//!
//! One file per key and side (`send/` for the encoder, `recv/` for the decoder), named by the
//! key's hex, holding a small header and the baseline image. Every write goes through an
//! [`AtomicFile`] that is fsynced and linked over the old one (then the directory is fsynced),
//! so after a crash a key's state is the old round or the new one, never a torn mix; a damaged
//! file is detected by its checksums and refused. Directories are made by the first save, not
//! by opening: a command that fails creates nothing.
//!
//! A receiver that writes each round's image to a file anyway (`hde decode --state -o FILE`,
//! `hde serve --out`) keeps that file as its baseline instead of a second copy: the state
//! holds a hard link to it (`<hex>.<seq>.img`, one inode, no bytes written twice) and a header
//! file that names it. The link is made before the header points to it, and older images are
//! removed only after, so a crash leaves the old round or the new one. If the image is changed
//! in place afterwards (a VM booted from it), its checksum no longer matches and the next
//! delta is refused for a keyframe, never applied to the wrong bytes.
//!
//! A sender never writes its image: its baseline is the image it just encoded, which the
//! caller usually has in a file (the round's input). The state keeps the baseline's page
//! hashes and that file's path; the next process maps the file and checks every page against
//! its hash. Pages that still match serve as old content (patches, references); pages that
//! changed since (the file was overwritten, a disk image in use) or a file that is gone leave
//! those pages known by hash alone: still recognised when unchanged, sent whole when changed,
//! never patched against wrong bytes. An image read from a pipe is kept in `<hex>.copy`,
//! where only the pages that differ are written, unsynced: the hashes catch what a crash tore.
//!
//! File format (little-endian): magic `HDES`, version, flags (bit 0: the image is the linked
//! `<hex>.<seq>.img`, not in this file; bit 1: page hashes and a source path instead of the
//! image), 2 zero bytes, sequence, image checksum,
//! chain length (low 32 bits) and keyframe time in seconds (high 32 bits), image length, then in
//! version 2 the number of rounds of the key, then an xxh3-64 of the header so far, then the
//! image, or with bit 1: page size (u32), path length (u32), the xxh3-128 of every page (16 bytes
//! each, 0 for a zero page), the path's bytes and an xxh3-64 of this section.
//! Version 1 files (no round count) are still read.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hde_delta::{BaselineId, DeltaDecoder, DeltaEncoder, ReceiverBaselines, SenderBaselines};
use hde_selector::Selector;

use crate::CodecBank;
use xxhash_rust::xxh3::xxh3_64;

use crate::fsio::{AtomicFile, Existing};
use crate::{Error, Hde, Result};

const MAGIC: [u8; 4] = *b"HDES";
const VERSION: u8 = 2;
/// Header length by version (index 1 and 2).
const HEADER_V1: usize = 48;
const HEADER: usize = 56;
/// Flags byte: the image lives in the linked `<hex>.<seq>.img`.
const FLAG_LINKED: u8 = 1;
/// Flags byte: page hashes and a source path follow the header, not the image.
const FLAG_HASHED: u8 = 2;
/// Longest source path kept.
const MAX_PATH: u32 = 4096;

/// Which side's baselines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The encoder's.
    Send,
    /// The decoder's.
    Receive,
}

impl Side {
    fn dir(self) -> &'static str {
        match self {
            Side::Send => "send",
            Side::Receive => "recv",
        }
    }
}

/// A saved baseline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// Its identity.
    pub id: BaselineId,
    /// Deltas since its keyframe (sender side).
    pub chain: u32,
    /// Wall-clock time of that keyframe, ms since the Unix epoch (sender side).
    pub keyframe_ms: u64,
    /// Rounds of the key this side has encoded or applied, this one included (0: unknown, a
    /// file from before round counts were kept).
    pub rounds: u64,
    /// The image (empty when `hashed` holds the baseline).
    pub image: Vec<u8>,
    /// A baseline saved as page hashes and the file that held the image (sender side).
    pub hashed: Option<Hashed>,
}

/// A baseline saved without its bytes: what [`StateDir::restore_sender`] checks a file against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashed {
    /// The image's length.
    pub len: u64,
    /// The page size of the hashes.
    pub page_size: u32,
    /// The xxh3-128 of every page (0 for a zero page).
    pub hashes: Vec<u128>,
    /// The file that held the image when it was saved.
    pub source: PathBuf,
}

impl Saved {
    /// The image's length, whether its bytes or its hashes were saved.
    pub fn len(&self) -> u64 {
        self.hashed.as_ref().map_or(self.image.len() as u64, |h| h.len)
    }

    /// Whether the image is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a sender's baseline image is, to save it: the bytes, and the file they came from when
/// there is one (then nothing is copied).
#[derive(Debug, Clone, Copy)]
pub struct SenderImage<'a> {
    /// The image.
    pub bytes: &'a [u8],
    /// A regular file holding exactly `bytes` now (the round's input), if any.
    pub file: Option<&'a Path>,
}

/// A linked image not read yet: its path and length.
type LinkedImage = (PathBuf, u64);

/// A directory of saved baselines.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Writes `bytes` at `offset` of `file` (a fresh one), leaving holes where whole 4 KiB blocks
/// are zero, and sets the file's length to `offset + bytes.len()`.
///
/// VM images are a third or more zero pages: holes save the copy into the page cache and the
/// disk blocks, as `zstd -d --sparse` does. Reading a hole gives zeros.
pub fn write_sparse(file: &File, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
    write_sparse_at(file, offset, bytes)?;
    file.set_len(offset + bytes.len() as u64)
}

/// [`write_sparse`] without setting the length: for writers filling parts of one file at once
/// (the length is set once, by whoever knows it).
pub fn write_sparse_at(file: &File, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
    write_runs(file, offset, bytes, |_, block| block.len() == RUN_BLOCK && hde_delta::is_zero(block)).map(|_| ())
}

/// Writes `bytes` at `offset` of `file` where they differ from `current`, what the file holds
/// there now (read by the caller), in runs of 4 KiB blocks; returns the bytes written. For a
/// file that holds an older version of the image: only what changed is written, zero blocks
/// included (a block that must become zero is written as zeros).
pub fn write_changed_at(file: &File, offset: u64, bytes: &[u8], current: &[u8]) -> std::io::Result<u64> {
    write_runs(file, offset, bytes, |at, block| current.get(at..at + block.len()) == Some(block))
}

/// The block size of [`write_runs`].
const RUN_BLOCK: usize = 4096;

/// Writes `bytes` at `offset` of `file` in runs of the 4 KiB blocks that `skip(at, block)`
/// does not skip; returns the bytes written.
fn write_runs(file: &File, offset: u64, bytes: &[u8], skip: impl Fn(usize, &[u8]) -> bool) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut written = 0u64;
    let mut run_start = None;
    let mut at = 0;
    for block in bytes.chunks(RUN_BLOCK) {
        match (skip(at, block), run_start) {
            (false, None) => run_start = Some(at),
            (true, Some(start)) => {
                file.write_all_at(&bytes[start..at], offset + start as u64)?;
                written += (at - start) as u64;
                run_start = None;
            }
            _ => {}
        }
        at += block.len();
    }
    if let Some(start) = run_start {
        file.write_all_at(&bytes[start..], offset + start as u64)?;
        written += (bytes.len() - start) as u64;
    }
    Ok(written)
}

impl StateDir {
    /// The state directory at `root`. Nothing is created until a baseline is saved; a `root`
    /// that exists and is not a directory is refused.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        match fs::metadata(&root) {
            Ok(m) if !m.is_dir() => {
                Err(io_at(&root)(std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory")))
            }
            _ => Ok(StateDir { root }),
        }
    }

    /// The directory's path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The keys saved on `side`, sorted.
    pub fn keys(&self, side: Side) -> Result<Vec<String>> {
        let dir = self.root.join(side.dir());
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_at(&dir)(e)),
        };
        let mut keys = Vec::new();
        for entry in entries {
            let name = entry.map_err(io_at(&dir))?.file_name();
            // Anything that is not `<hex>.hde` (a temporary file, a stray) is not a key.
            if let Some(key) = name.to_str().and_then(|n| n.strip_suffix(".hde")).and_then(unhex) {
                keys.push(key);
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Forgets `key` on `side`; returns whether it was saved.
    pub fn remove(&self, side: Side, key: &str) -> Result<bool> {
        let path = self.path(side, key);
        self.remove_images(side, key, None);
        let _ = fs::remove_file(path.with_extension("copy"));
        match fs::remove_file(&path) {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    File::open(dir).and_then(|d| d.sync_all()).map_err(io_at(dir))?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_at(&path)(e)),
        }
    }

    /// When `key`'s file on `side` was last written.
    pub fn modified(&self, side: Side, key: &str) -> Result<SystemTime> {
        let path = self.path(side, key);
        fs::metadata(&path).and_then(|m| m.modified()).map_err(io_at(&path))
    }

    /// The file of `key` on `side`.
    pub fn path(&self, side: Side, key: &str) -> PathBuf {
        let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
        self.root.join(side.dir()).join(format!("{hex}.hde"))
    }

    /// Loads `key`'s baseline on `side`, if saved.
    pub fn load(&self, side: Side, key: &str, max_image: u64) -> Result<Option<Saved>> {
        Ok(self.load_inner(side, key, max_image, true)?.map(|(saved, _)| saved))
    }

    /// Opens a state file and reads its header, checking magic, version and checksum; returns
    /// the file (positioned after the header), the header and its length.
    fn open_head(path: &Path) -> Result<Option<(File, [u8; HEADER], usize)>> {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_at(path)(e)),
        };
        let mut head = [0u8; HEADER];
        file.read_exact(&mut head[..HEADER_V1]).map_err(io_at(path))?;
        if head[..4] != MAGIC || !(1..=VERSION).contains(&head[4]) {
            return Err(Error::DamagedState { reason: "state file has a wrong magic or version" });
        }
        let header = if head[4] == 1 { HEADER_V1 } else { HEADER };
        file.read_exact(&mut head[HEADER_V1..header]).map_err(io_at(path))?;
        let stored = u64::from_le_bytes(head[header - 8..header].try_into().unwrap_or_default());
        let computed = xxh3_64(&head[..header - 8]);
        if stored != computed {
            return Err(Error::ChecksumMismatch { what: format!("state file {}", path.display()), stored, computed });
        }
        Ok(Some((file, head, header)))
    }

    /// [`load`](Self::load); with `read_linked` false, a linked image is not read but its path
    /// and length returned (the length checked against the file's).
    fn load_inner(
        &self,
        side: Side,
        key: &str,
        max_image: u64,
        read_linked: bool,
    ) -> Result<Option<(Saved, Option<LinkedImage>)>> {
        let path = self.path(side, key);
        let Some((mut file, head, header)) = Self::open_head(&path)? else { return Ok(None) };
        if head[5] & !(FLAG_LINKED | FLAG_HASHED) != 0
            || head[5] == FLAG_LINKED | FLAG_HASHED
            || head[6] != 0
            || head[7] != 0
        {
            return Err(Error::DamagedState { reason: "state file has unknown flags" });
        }
        let linked = head[5] & FLAG_LINKED != 0;
        let hashed = head[5] & FLAG_HASHED != 0;
        let field = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().unwrap_or_default());
        let len = field(32);
        if len > max_image {
            return Err(Error::LimitExceeded { what: "saved image size", claimed: len, limit: max_image });
        }
        let packed = field(24);
        let chain = u32::try_from(packed & 0xffff_ffff).unwrap_or(0);
        let keyframe_ms = (packed >> 32) * 1000;
        let rounds = if header == HEADER { field(40) } else { 0 };
        let id = BaselineId { seq: field(8), checksum: field(16) };
        // The file's own length must agree before anything is allocated for the claim.
        let on_disk = file.metadata().map_err(io_at(&path))?.len();
        if hashed {
            let hashed = Self::load_hashed(&mut file, &path, len, on_disk.saturating_sub(header as u64))?;
            return Ok(Some((Saved { id, chain, keyframe_ms, rounds, image: Vec::new(), hashed: Some(hashed) }, None)));
        }
        let inline = if linked { 0 } else { len };
        if on_disk != header as u64 + inline {
            return Err(Error::DamagedState { reason: "state file length differs from its header's" });
        }
        let mut image = Vec::new();
        if linked {
            let img = self.image_path(side, key, field(8));
            let mut f = File::open(&img).map_err(io_at(&img))?;
            if f.metadata().map_err(io_at(&img))?.len() != len {
                return Err(Error::DamagedState { reason: "linked state image length differs from its header's" });
            }
            if !read_linked {
                return Ok(Some((Saved { id, chain, keyframe_ms, rounds, image, hashed: None }, Some((img, len)))));
            }
            image.reserve_exact(len as usize);
            f.read_to_end(&mut image).map_err(io_at(&img))?;
        } else {
            image.reserve_exact(len as usize);
            file.read_to_end(&mut image).map_err(io_at(&path))?;
        }
        if image.len() as u64 != len {
            return Err(Error::DamagedState { reason: "state file is truncated" });
        }
        Ok(Some((Saved { id, chain, keyframe_ms, rounds, image, hashed: None }, None)))
    }

    /// Reads the hashes section of a hashed state file (`rest` bytes after the header).
    fn load_hashed(file: &mut File, path: &Path, len: u64, rest: u64) -> Result<Hashed> {
        if rest < 16 {
            return Err(Error::DamagedState { reason: "state file is truncated" });
        }
        let mut fixed = [0u8; 8];
        file.read_exact(&mut fixed).map_err(io_at(path))?;
        let page_size = u32::from_le_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]);
        let path_len = u32::from_le_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        if !page_size.is_power_of_two() || page_size < 512 || path_len > MAX_PATH {
            return Err(Error::DamagedState { reason: "state file has a bad page size or path length" });
        }
        let pages = len.div_ceil(u64::from(page_size));
        // Checked against the file's length before anything is allocated.
        if rest != 8 + pages * 16 + u64::from(path_len) + 8 {
            return Err(Error::DamagedState { reason: "state file length differs from its header's" });
        }
        let mut section = Vec::with_capacity(usize::try_from(rest).unwrap_or(0));
        section.extend_from_slice(&fixed);
        file.read_to_end(&mut section).map_err(io_at(path))?;
        if section.len() as u64 != rest {
            return Err(Error::DamagedState { reason: "state file is truncated" });
        }
        let (body, sum) = section.split_at(section.len() - 8);
        let stored = u64::from_le_bytes(sum.try_into().unwrap_or_default());
        let computed = xxh3_64(body);
        if stored != computed {
            return Err(Error::ChecksumMismatch {
                what: format!("page hashes in {}", path.display()),
                stored,
                computed,
            });
        }
        let (hashes, source) = body[8..].split_at(body.len() - 8 - path_len as usize);
        let hashes = hashes.chunks_exact(16).map(|h| u128::from_le_bytes(h.try_into().unwrap_or_default())).collect();
        use std::os::unix::ffi::OsStrExt as _;
        let source = PathBuf::from(std::ffi::OsStr::from_bytes(source));
        Ok(Hashed { len, page_size, hashes, source })
    }

    /// The header of a saved baseline.
    fn header(saved: &Saved, len: u64, flags: u8) -> Vec<u8> {
        let mut head = Vec::with_capacity(HEADER);
        head.extend_from_slice(&MAGIC);
        head.push(VERSION);
        head.extend_from_slice(&[flags, 0, 0]);
        head.extend_from_slice(&saved.id.seq.to_le_bytes());
        head.extend_from_slice(&saved.id.checksum.to_le_bytes());
        // Chain in the low 32 bits, keyframe time (seconds-resolution is plenty) in the high.
        let packed = u64::from(saved.chain) | ((saved.keyframe_ms / 1000) << 32);
        head.extend_from_slice(&packed.to_le_bytes());
        head.extend_from_slice(&len.to_le_bytes());
        head.extend_from_slice(&saved.rounds.to_le_bytes());
        let sum = xxh3_64(&head);
        head.extend_from_slice(&sum.to_le_bytes());
        head
    }

    /// Where the linked image of `key`'s round `seq` lives.
    fn image_path(&self, side: Side, key: &str, seq: u64) -> PathBuf {
        let mut path = self.path(side, key);
        path.set_extension(format!("{seq:016x}.img"));
        path
    }

    /// Removes `key`'s linked images on `side` other than `keep`'s.
    fn remove_images(&self, side: Side, key: &str, keep: Option<u64>) {
        let head = self.path(side, key);
        let Some(stem) = head.file_stem().and_then(|s| s.to_str()).map(|s| format!("{s}.")) else { return };
        let keep = keep.map(|seq| self.image_path(side, key, seq));
        let Ok(entries) = fs::read_dir(self.root.join(side.dir())) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&stem) && name.ends_with(".img") && Some(&path) != keep.as_ref() {
                let _ = fs::remove_file(&path);
            }
        }
    }

    /// Saves `key`'s baseline on `side` crash-safely: `saved`'s identity and policy state with
    /// `image` (borrowed, so saving costs no copy of it; `saved.image` is not written).
    pub fn save(&self, side: Side, key: &str, saved: &Saved, image: &[u8]) -> Result<()> {
        let path = self.path(side, key);
        let head = Self::header(saved, image.len() as u64, 0);
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            let f = AtomicFile::create(&path)?;
            f.file().write_all(&head)?;
            write_sparse(f.file(), HEADER as u64, image)?;
            f.commit(Existing::Replace, true)
        };
        write().map_err(io_at(&path))?;
        self.remove_images(side, key, None);
        Ok(())
    }

    /// Saves `key`'s baseline on `side` as a hard link to `image_file`, which must hold the
    /// image (`len` bytes) durably already; no image bytes are written. Returns `false` where
    /// the file cannot be linked (another filesystem, a filesystem without hard links, the
    /// link count at its limit): then use [`save`](Self::save).
    pub fn save_linked(&self, side: Side, key: &str, saved: &Saved, image_file: &Path, len: u64) -> Result<bool> {
        let path = self.path(side, key);
        let img = self.image_path(side, key, saved.id.seq);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_at(dir))?;
        }
        // Linked under a temporary name, then renamed: a stale image of the same sequence
        // (from a crash before its header was written) is replaced, never appended to.
        let tmp = img.with_extension("img.tmp");
        let _ = fs::remove_file(&tmp);
        // Any refusal to link (another filesystem, no hard links there, too many links) is
        // answered by a copy: the caller's `save`, which reports real I/O failures itself.
        if fs::hard_link(image_file, &tmp).is_err() {
            return Ok(false);
        }
        fs::rename(&tmp, &img).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_at(&img)(e)
        })?;
        let head = Self::header(saved, len, FLAG_LINKED);
        let write = || -> std::io::Result<()> {
            let f = AtomicFile::create(&path)?;
            f.file().write_all(&head)?;
            f.commit(Existing::Replace, true)
        };
        write().map_err(io_at(&path))?;
        self.remove_images(side, key, Some(saved.id.seq));
        Ok(true)
    }

    /// [`restore_sender`](Self::restore_sender) for a run whose first round may be a keyframe
    /// asked for: there a saved baseline that cannot be restored (damaged, truncated, of
    /// another geometry) is left for that keyframe to replace, and the reason is returned for
    /// a warning instead of failing the run. Returns the rounds the saved state counts (0 when
    /// none) and that reason.
    ///
    /// # Errors
    ///
    /// Without `keyframe`, what [`restore_sender`](Self::restore_sender) returns: the caller
    /// asks for a keyframe (`hde encode --keyframe`) to replace a damaged baseline.
    pub fn restore_sender_or_replace<D, S, B, R>(
        &self,
        hde: &Hde<D, S, B, R>,
        key: &str,
        keyframe: bool,
    ) -> Result<(u64, Option<Error>)>
    where
        D: DeltaEncoder + SenderBaselines,
        S: Selector,
        B: CodecBank,
        R: DeltaDecoder + ReceiverBaselines,
    {
        match self.restore_sender(hde, key) {
            Ok(rounds) => Ok((rounds.unwrap_or(0), None)),
            Err(e) if keyframe => Ok((0, Some(e))),
            Err(e) => Err(e),
        }
    }

    /// Restores the sender's baseline of `key` into `hde` (if saved); returns the number of
    /// rounds the saved state counts (`Some(0)` for a file that kept no count), `None` if
    /// nothing was saved.
    ///
    /// A baseline saved as hashes is checked page by page against its source file (see the
    /// module's documentation); a source that changed or is gone costs ratio, never exactness.
    pub fn restore_sender<D, S, B, R>(&self, hde: &Hde<D, S, B, R>, key: &str) -> Result<Option<u64>>
    where
        D: DeltaEncoder + SenderBaselines,
        S: Selector,
        B: CodecBank,
        R: DeltaDecoder + ReceiverBaselines,
    {
        let Some(saved) = self.load(Side::Send, key, hde.config().delta.max_image_size)? else { return Ok(None) };
        let path = self.path(Side::Send, key);
        let age = Duration::from_secs(now_ms().saturating_sub(saved.keyframe_ms * 1000) / 1000);
        match saved.hashed {
            None => hde
                .sender()
                .restore_image(key, saved.id, saved.image.into(), saved.chain, age)
                .map_err(saved_mismatch(&path))?,
            Some(h) => {
                if h.page_size as usize != hde.config().delta.page_size {
                    return Err(Error::DamagedState { reason: "the saved baseline has another page size" });
                }
                let content = map_file(&h.source, h.len);
                hde.sender()
                    .restore_hashed(key, saved.id, h.len, h.hashes, content, saved.chain, age)
                    .map_err(saved_mismatch(&path))?;
            }
        }
        Ok(Some(saved.rounds))
    }

    /// Saves the sender's baseline of `key` (the image just encoded) from `hde`, as the key's
    /// round `rounds`: its page hashes and the path of `image.file`, or where there is no file,
    /// the pages of a kept copy that differ.
    pub fn save_sender<D, S, B, R>(
        &self,
        hde: &Hde<D, S, B, R>,
        key: &str,
        image: SenderImage<'_>,
        rounds: u64,
    ) -> Result<()>
    where
        D: DeltaEncoder + SenderBaselines,
        S: Selector,
        B: CodecBank,
        R: DeltaDecoder + ReceiverBaselines,
    {
        let (Some(info), Some(hashes)) = (hde.sender().baseline_info(key), hde.sender().baseline_hashes(key)) else {
            return Ok(());
        };
        let keyframe_ms = now_ms().saturating_sub(u64::try_from(info.since_keyframe.as_millis()).unwrap_or(0));
        let saved = Saved { id: info.id, chain: info.chain, keyframe_ms, rounds, image: Vec::new(), hashed: None };
        let path = self.path(Side::Send, key);
        let source = match image.file.map(fs::canonicalize) {
            Some(Ok(file)) => file,
            _ => {
                let copy = path.with_extension("copy");
                if let Some(dir) = copy.parent() {
                    fs::create_dir_all(dir).map_err(io_at(dir))?;
                }
                update_copy(&copy, image.bytes).map_err(io_at(&copy))?;
                copy
            }
        };
        use std::os::unix::ffi::OsStrExt as _;
        let source_bytes = source.as_os_str().as_bytes();
        let path_len = u32::try_from(source_bytes.len()).ok().filter(|&n| n <= MAX_PATH);
        let Some(path_len) = path_len else {
            return Err(io_at(&source)(std::io::Error::new(std::io::ErrorKind::InvalidInput, "path too long to keep")));
        };
        let page_size = u32::try_from(hde.config().delta.page_size).unwrap_or(u32::MAX);
        let mut section = Vec::with_capacity(16 + hashes.len() * 16 + source_bytes.len());
        section.extend_from_slice(&page_size.to_le_bytes());
        section.extend_from_slice(&path_len.to_le_bytes());
        for h in &hashes {
            section.extend_from_slice(&h.to_le_bytes());
        }
        section.extend_from_slice(source_bytes);
        let sum = xxh3_64(&section);
        section.extend_from_slice(&sum.to_le_bytes());
        let head = Self::header(&saved, image.bytes.len() as u64, FLAG_HASHED);
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            let f = AtomicFile::create(&path)?;
            f.file().write_all(&head)?;
            f.file().write_all(&section)?;
            f.commit(Existing::Replace, true)
        };
        write().map_err(io_at(&path))?;
        if image.file.is_some() {
            let _ = fs::remove_file(path.with_extension("copy"));
        }
        Ok(())
    }

    /// Restores the receiver's baseline of `key` into `hde` (if saved); returns the rounds it
    /// counts as [`restore_sender`](Self::restore_sender) does.
    pub fn restore_receiver<D, S, B, R>(&self, hde: &Hde<D, S, B, R>, key: &str) -> Result<Option<u64>>
    where
        D: DeltaEncoder + SenderBaselines,
        S: Selector,
        B: CodecBank,
        R: DeltaDecoder + ReceiverBaselines,
    {
        let loaded = self.load_inner(Side::Receive, key, hde.config().delta.max_image_size, false)?;
        let Some((saved, linked)) = loaded else { return Ok(None) };
        let ps = hde.config().delta.page_size;
        let path = self.path(Side::Receive, key);
        match linked {
            // The image file mapped, not read: no copy of it in this process's memory.
            Some((img, len)) => match map_file(&img, len) {
                Some(image) => hde.receiver().restore_image(key, saved.id, ps, image).map_err(saved_mismatch(&img))?,
                None if len == 0 => {
                    hde.receiver().restore_image(key, saved.id, ps, Vec::new().into()).map_err(saved_mismatch(&img))?
                }
                None => return Err(Error::DamagedState { reason: "linked state image cannot be mapped" }),
            },
            None => {
                hde.receiver().restore_image(key, saved.id, ps, saved.image.into()).map_err(saved_mismatch(&path))?
            }
        }
        Ok(Some(saved.rounds))
    }

    /// Saves the receiver's baseline of `key` (the image just decoded) from `hde`, as the key's
    /// round `rounds`.
    pub fn save_receiver<D, S, B, R>(&self, hde: &Hde<D, S, B, R>, key: &str, rounds: u64) -> Result<()>
    where
        D: DeltaEncoder + SenderBaselines,
        S: Selector,
        B: CodecBank,
        R: DeltaDecoder + ReceiverBaselines,
    {
        let (Some(id), Some(image)) = (hde.receiver().baseline_id(key), hde.receiver().baseline_image(key)) else {
            return Ok(());
        };
        self.save(
            Side::Receive,
            key,
            &Saved { id, chain: 0, keyframe_ms: 0, rounds, image: Vec::new(), hashed: None },
            &image,
        )
    }

    /// Saves the receiver's baseline `id` of `key` (round `rounds`) for a receiver that wrote
    /// its image (`image`) to `image_file`: the state links that file instead of writing a
    /// copy, or copies it where it cannot be linked.
    pub fn save_receiver_linked(
        &self,
        key: &str,
        id: BaselineId,
        rounds: u64,
        image_file: &Path,
        image: &[u8],
    ) -> Result<()> {
        let saved = Saved { id, chain: 0, keyframe_ms: 0, rounds, image: Vec::new(), hashed: None };
        if self.save_linked(Side::Receive, key, &saved, image_file, image.len() as u64)? {
            return Ok(());
        }
        self.save(Side::Receive, key, &saved, image)
    }
}

impl StateDir {
    /// The identity and length of `key`'s saved baseline on `side`, from its header alone
    /// (checked); `None` if nothing is saved.
    pub fn peek(&self, side: Side, key: &str) -> Result<Option<(BaselineId, u64)>> {
        let Some((_, head, _)) = Self::open_head(&self.path(side, key))? else { return Ok(None) };
        let field = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().unwrap_or_default());
        Ok(Some((BaselineId { seq: field(8), checksum: field(16) }, field(32))))
    }

    /// Every baseline saved here, on both sides: key, side, identity and length. Files that
    /// do not read are left out (a later restore names what is wrong with them).
    pub fn holdings(&self) -> Result<Vec<(String, Side, BaselineId, u64)>> {
        let mut out = Vec::new();
        for side in [Side::Send, Side::Receive] {
            for key in self.keys(side)? {
                if let Ok(Some((id, len))) = self.peek(side, &key) {
                    out.push((key, side, id, len));
                }
            }
        }
        Ok(out)
    }

    /// The image of `key`'s saved baseline on `side`, mapped where it is a file (a receiver's
    /// linked image, a sender's source), with its identity. A sender's baseline whose source
    /// changed is returned as it is now: whoever uses it verifies it against the identity.
    fn image_of(&self, side: Side, key: &str, max_image: u64) -> Result<Option<(BaselineId, hde_delta::Image)>> {
        let Some((saved, linked)) = self.load_inner(side, key, max_image, false)? else { return Ok(None) };
        let image = match (linked, saved.hashed) {
            (Some((path, len)), _) => match map_file(&path, len) {
                Some(image) => image,
                None if len == 0 => hde_delta::Image::from(Vec::new()),
                None => return Err(Error::DamagedState { reason: "linked state image cannot be mapped" }),
            },
            (None, Some(h)) => match map_file(&h.source, h.len) {
                Some(image) => image,
                None if h.len == 0 => hde_delta::Image::from(Vec::new()),
                None => return Ok(None),
            },
            (None, None) => hde_delta::Image::from(saved.image),
        };
        Ok(Some((saved.id, image)))
    }

    /// The sketch of `key`'s saved baseline on `side` (for the replicated index): from the
    /// saved page hashes where the sender kept them, else from the image.
    pub fn sketch<D, S, B, R>(
        &self,
        side: Side,
        key: &str,
        hde: &Hde<D, S, B, R>,
    ) -> Result<Option<crate::index::Sketch>>
    where
        D: DeltaEncoder + SenderBaselines,
        S: Selector,
        B: CodecBank,
        R: DeltaDecoder + ReceiverBaselines,
    {
        let max = hde.config().delta.max_image_size;
        if side == Side::Send {
            if let Some(Saved { hashed: Some(h), .. }) = self.load(side, key, max)? {
                return Ok(Some(crate::index::Sketch::of_hashes(&h.hashes)));
            }
        }
        let ps = hde.config().delta.page_size;
        Ok(self
            .image_of(side, key, max)?
            .map(|(_, image)| crate::index::Sketch::of_image(&image, ps, hde.config().threads)))
    }

    /// Makes `want` the sender's baseline of `key` if this directory holds it on either side:
    /// the sender's own saved round, or a round this node received (a VM that comes back to
    /// the node it left, sent on from where it arrived). Returns whether the sender holds
    /// `want` now; a saved image that no longer matches `want` is an error.
    pub fn restore_sender_from<D, S, B, R>(&self, hde: &Hde<D, S, B, R>, key: &str, want: BaselineId) -> Result<bool>
    where
        D: DeltaEncoder + SenderBaselines,
        S: Selector,
        B: CodecBank,
        R: DeltaDecoder + ReceiverBaselines,
    {
        if hde.sender().baseline_info(key).map(|i| i.id) == Some(want) {
            return Ok(true);
        }
        if self.peek(Side::Send, key)?.is_some_and(|(id, _)| id == want) {
            self.restore_sender(hde, key)?;
        } else if self.peek(Side::Receive, key)?.is_some_and(|(id, _)| id == want) {
            if let Some((id, image)) = self.image_of(Side::Receive, key, hde.config().delta.max_image_size)? {
                let path = self.path(Side::Receive, key);
                hde.sender().restore_image(key, id, image, 0, Duration::ZERO).map_err(saved_mismatch(&path))?;
            }
        }
        Ok(hde.sender().baseline_info(key).map(|i| i.id) == Some(want))
    }

    /// Makes `want` the receiver's baseline of `key` if this directory holds it on either
    /// side: a round received, or the round this node last sent of `key` (whose image is its
    /// source file, verified page by page against the identity). Returns whether the receiver
    /// holds `want` now.
    pub fn restore_receiver_from<D, S, B, R>(&self, hde: &Hde<D, S, B, R>, key: &str, want: BaselineId) -> Result<bool>
    where
        D: DeltaEncoder + SenderBaselines,
        S: Selector,
        B: CodecBank,
        R: DeltaDecoder + ReceiverBaselines,
    {
        if hde.receiver().baseline_id(key) == Some(want) {
            return Ok(true);
        }
        let ps = hde.config().delta.page_size;
        for side in [Side::Receive, Side::Send] {
            if !self.peek(side, key)?.is_some_and(|(id, _)| id == want) {
                continue;
            }
            if let Some((id, image)) = self.image_of(side, key, hde.config().delta.max_image_size)? {
                let path = self.path(side, key);
                hde.receiver().restore_image(key, id, ps, image).map_err(saved_mismatch(&path))?;
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// A restored image that does not match its saved identity, named as the saved baseline it is
/// (the delta layer calls it a reconstructed image).
fn saved_mismatch(path: &Path) -> impl FnOnce(hde_delta::Error) -> Error + '_ {
    move |e| match e {
        hde_delta::Error::ChecksumMismatch { key, expected, actual } => Error::ChecksumMismatch {
            what: format!("saved baseline of {key:?} in {}", path.display()),
            stored: expected,
            computed: actual,
        },
        e => Error::Delta(e),
    }
}

/// The bytes of `path` if it is a regular file of `len` bytes, mapped.
fn map_file(path: &Path, len: u64) -> Option<hde_delta::Image> {
    let file = File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() != len || len == 0 {
        return None;
    }
    // Another process changing the file while we hold it changes the bytes under us; every
    // page is checked against its hash, and a page changed after that makes the receiver's
    // checksum of the round fail (a typed error there), as with any input changed mid-read.
    crate::fsio::map_whole(&file, true).ok()
}

/// Makes the file at `path` hold `image`, writing only the pages that differ from what it
/// holds. Not synced: the hashes saved beside it catch what a crash leaves torn.
fn update_copy(path: &Path, image: &[u8]) -> std::io::Result<()> {
    let existed = path.exists();
    let file = fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
    let result = fill_copy(&file, image);
    if result.is_err() && !existed {
        // Nothing refers to a copy made by this call: leave no half of one behind.
        let _ = fs::remove_file(path);
    }
    result
}

fn fill_copy(file: &File, image: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    const CHUNK: usize = 1 << 20;
    const PAGE: usize = 4096;
    let held = file.metadata()?.len();
    let mut old = vec![0u8; CHUNK];
    for (i, new) in image.chunks(CHUNK).enumerate() {
        let at = (i * CHUNK) as u64;
        let have = usize::try_from(held.saturating_sub(at)).unwrap_or(usize::MAX).min(new.len());
        file.read_exact_at(&mut old[..have], at)?;
        for (j, page) in new.chunks(PAGE).enumerate() {
            let start = j * PAGE;
            let same = start + page.len() <= have && old[start..start + page.len()] == *page;
            // Zero pages past the old end stay holes.
            let hole = start >= have && hde_delta::is_zero(page);
            if !same && !hole {
                file.write_all_at(page, at + start as u64)?;
            }
        }
    }
    file.set_len(image.len() as u64)
}

/// The key a state file name (without `.hde`) stands for: its UTF-8 bytes in hex.
fn unhex(name: &str) -> Option<String> {
    if name.is_empty() || name.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..name.len()).step_by(2).map(|i| name.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_blocks_are_written_over_an_older_image() {
        let path = std::env::temp_dir().join(format!("hde-write-changed-{}", std::process::id()));
        let old: Vec<u8> = (0..10 * 4096 + 100).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &old).unwrap();
        let mut new = old.clone();
        new[5000] ^= 1; // block 1
        new[9 * 4096..10 * 4096].fill(0); // block 9 becomes zero: written, not skipped
        *new.last_mut().unwrap() ^= 1; // the short last block
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        assert_eq!(write_changed_at(&file, 0, &new, &old).unwrap(), 2 * 4096 + 100);
        assert!(std::fs::read(&path).unwrap() == new);
        // Against a shorter view of the file, what it lacks counts as different.
        assert_eq!(write_changed_at(&file, 0, &new, &new[..4096]).unwrap(), new.len() as u64 - 4096);
        std::fs::remove_file(&path).unwrap();
    }

    /// A header's worth of state: identity and round count, no image.
    fn meta(seq: u64, checksum: u64, rounds: u64) -> Saved {
        let id = BaselineId { seq, checksum };
        Saved { id, chain: 0, keyframe_ms: 0, rounds, image: Vec::new(), hashed: None }
    }

    #[test]
    fn a_header_claiming_more_than_the_file_holds_is_refused_before_allocation() {
        let root = std::env::temp_dir().join(format!("hde-state-claim-{}", std::process::id()));
        let dir = StateDir::open(&root).unwrap();
        let image = vec![7u8; 8192];
        let saved = meta(3, 9, 1);
        dir.save(Side::Send, "vm", &saved, &image).unwrap();
        assert_eq!(dir.load(Side::Send, "vm", u64::MAX).unwrap().unwrap().image, image);
        // Rewrite the length field as 1 TiB with a valid header checksum.
        let path = dir.path(Side::Send, "vm");
        let mut bytes = fs::read(&path).unwrap();
        bytes[32..40].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let sum = xxh3_64(&bytes[..48]);
        bytes[48..56].copy_from_slice(&sum.to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        let err = dir.load(Side::Send, "vm", u64::MAX).unwrap_err();
        assert!(matches!(err, Error::DamagedState { .. }), "{err:?}");
        // A run that starts with a keyframe leaves it for the keyframe to replace; any other
        // run stops with the error.
        let hde = Hde::new(crate::HdeConfig::new(1)).unwrap();
        let (rounds, ignored) = dir.restore_sender_or_replace(&hde, "vm", true).unwrap();
        assert_eq!(rounds, 0);
        // (Against the node's 64 GiB image limit the 1 TiB claim is over the limit.)
        assert!(matches!(ignored, Some(Error::LimitExceeded { .. })), "{ignored:?}");
        assert!(matches!(dir.restore_sender_or_replace(&hde, "vm", false), Err(Error::LimitExceeded { .. })));
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn keys_are_listed_removed_and_version_1_files_still_load() {
        let root = std::env::temp_dir().join(format!("hde-state-keys-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dir = StateDir::open(&root).unwrap();
        assert!(!root.exists(), "opening creates nothing");
        assert!(dir.keys(Side::Send).unwrap().is_empty());
        let image = vec![1u8; 4096];
        let id = BaselineId { seq: 5, checksum: 11 };
        for key in ["vm-b", "vm a", "\u{e9}t\u{e9}"] {
            let saved = Saved { id, chain: 2, keyframe_ms: 7_000, rounds: 4, image: Vec::new(), hashed: None };
            dir.save(Side::Send, key, &saved, &image).unwrap();
        }
        fs::write(root.join("send").join(".x.hde-tmp.1.2"), b"stray").unwrap();
        assert_eq!(dir.keys(Side::Send).unwrap(), ["vm a", "vm-b", "\u{e9}t\u{e9}"]);
        let loaded = dir.load(Side::Send, "vm-b", u64::MAX).unwrap().unwrap();
        assert_eq!((loaded.id, loaded.chain, loaded.keyframe_ms, loaded.rounds), (id, 2, 7_000, 4));
        assert!(dir.remove(Side::Send, "vm-b").unwrap());
        assert!(!dir.remove(Side::Send, "vm-b").unwrap());
        assert_eq!(dir.keys(Side::Send).unwrap(), ["vm a", "\u{e9}t\u{e9}"]);
        // The version 1 layout: no round count, the checksum at byte 40.
        let mut v1 = fs::read(dir.path(Side::Send, "vm a")).unwrap();
        v1.drain(40..48);
        v1[4] = 1;
        let sum = xxh3_64(&v1[..40]);
        v1[40..48].copy_from_slice(&sum.to_le_bytes());
        fs::write(dir.path(Side::Send, "vm a"), &v1).unwrap();
        let old = dir.load(Side::Send, "vm a", u64::MAX).unwrap().unwrap();
        assert_eq!((old.id, old.rounds, old.image), (id, 0, image));
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn a_linked_baseline_is_the_image_file_itself_and_changes_to_it_are_caught() {
        use std::os::unix::fs::MetadataExt as _;
        let root = std::env::temp_dir().join(format!("hde-state-linked-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let dir = StateDir::open(root.join("state")).unwrap();
        let mut image = vec![3u8; 16384];
        image[..4096].fill(0);
        let out = root.join("out.raw");
        fs::write(&out, &image).unwrap();
        let id = BaselineId { seq: 9, checksum: crate::delta::checksum(&image, 4096) };
        let saved = Saved { id, chain: 0, keyframe_ms: 0, rounds: 2, image: Vec::new(), hashed: None };
        assert!(dir.save_linked(Side::Receive, "vm", &saved, &out, image.len() as u64).unwrap());
        // The header alone is written; the image is the output's inode.
        assert_eq!(fs::metadata(dir.path(Side::Receive, "vm")).unwrap().len(), HEADER as u64);
        let img = dir.image_path(Side::Receive, "vm", 9);
        assert_eq!(fs::metadata(&img).unwrap().ino(), fs::metadata(&out).unwrap().ino());
        let loaded = dir.load(Side::Receive, "vm", u64::MAX).unwrap().unwrap();
        assert_eq!((loaded.id, loaded.rounds, &loaded.image), (id, 2, &image));
        // The next round (a new output file) replaces the link; the old image goes.
        let out2 = root.join("out2.raw");
        fs::write(&out2, &image).unwrap();
        let saved2 = Saved { id: BaselineId { seq: 10, ..id }, ..saved.clone() };
        assert!(dir.save_linked(Side::Receive, "vm", &saved2, &out2, image.len() as u64).unwrap());
        assert!(!img.exists());
        assert_eq!(dir.keys(Side::Receive).unwrap(), ["vm"]);
        // The output changed in place (a VM booted from it): the restore refuses it.
        let hde = Hde::new(crate::HdeConfig::new(1)).unwrap();
        std::fs::OpenOptions::new().write(true).open(&out2).unwrap().write_all(b"boot").unwrap();
        assert!(dir.restore_receiver(&hde, "vm").is_err());
        // Removing the key removes its image.
        assert!(dir.remove(Side::Receive, "vm").unwrap());
        assert_eq!(fs::read_dir(root.join("state/recv")).unwrap().count(), 0);
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn an_image_on_another_filesystem_is_not_linked_and_the_caller_copies() {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            eprintln!("skipped: no /dev/shm to put the image on another filesystem");
            return;
        }
        let image_file = shm.join(format!("hde-state-xdev-{}.raw", std::process::id()));
        fs::write(&image_file, vec![5u8; 8192]).unwrap();
        let root = std::env::temp_dir().join(format!("hde-state-xdev-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dir = StateDir::open(&root).unwrap();
        let saved = meta(1, 2, 1);
        let linked = dir.save_linked(Side::Receive, "vm", &saved, &image_file, 8192).unwrap();
        // /tmp on tmpfs too would link: then the state is the link, and loads as well.
        if !linked {
            assert!(!dir.path(Side::Receive, "vm").exists(), "nothing saved before the caller copies");
            dir.save(Side::Receive, "vm", &saved, &[5u8; 8192]).unwrap();
        }
        assert_eq!(dir.load(Side::Receive, "vm", u64::MAX).unwrap().unwrap().image, vec![5u8; 8192]);
        let _ = fs::remove_file(&image_file);
        let _ = fs::remove_dir_all(&root);
    }
}
