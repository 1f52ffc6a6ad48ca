//! QEMU's precopy migration stream, parsed as far as HDE needs it and no further.
//!
//! What is parsed (QEMU 7.2's `migration/savevm.c` and `migration/ram.c`; described in QEMU's
//! `docs/devel/migration.rst`):
//!
//! * the file header (`QEVM`, version 3) and the configuration section with its known
//!   subsections;
//! * the RAM section (`"ram"`): its setup (the RAM blocks and their lengths), and the page
//!   records of its parts and its end: a zero page (`RAM_SAVE_FLAG_ZERO` and a fill byte), a
//!   page (`RAM_SAVE_FLAG_PAGE` and `TARGET_PAGE_SIZE` bytes), the end of a part
//!   (`RAM_SAVE_FLAG_EOS`), each optionally naming its block (without
//!   `RAM_SAVE_FLAG_CONTINUE`);
//! * section footers, and the commands a precopy stream may carry (`PING`,
//!   `OPEN_RETURN_PATH`).
//!
//! Once the RAM section has ended, the rest of the stream is the state of the devices
//! (`QEMU_VM_SECTION_FULL` sections, whose length only their `VMStateDescription` knows) and
//! the end of the stream: it passes through unparsed, as [`Item::Tail`].
//!
//! Everything else is an error that names what was found and where: another live section
//! (block migration, dirty bitmaps, VFIO), postcopy, XBZRLE or compressed pages, multifd,
//! device state before RAM has ended. A parser that guessed would hand the destination a
//! stream it never sent.
//!
//! The parser is sans-I/O and incremental: [`Parser::feed`] gives it bytes, [`Parser::next_item`]
//! returns the next whole item or `None` until more bytes come. The same parser reads a
//! *skeleton* (the stream without the pages' bodies, [`Parser::skeleton`]), which is what the
//! receiver rebuilds the stream from.

use crate::{Error, Result};

/// `TARGET_PAGE_SIZE` of x86 (and of every target QEMU migrates with 4 KiB pages).
pub const PAGE: usize = 4096;
const PAGE_MASK: u64 = !(PAGE as u64 - 1);

const FILE_MAGIC: u32 = 0x5145_564d;
const FILE_VERSION: u32 = 3;

const VM_EOF: u8 = 0x00;
const SECTION_START: u8 = 0x01;
const SECTION_PART: u8 = 0x02;
const SECTION_END: u8 = 0x03;
const SECTION_FULL: u8 = 0x04;
const SUBSECTION: u8 = 0x05;
const VMDESCRIPTION: u8 = 0x06;
const CONFIGURATION: u8 = 0x07;
const COMMAND: u8 = 0x08;
const SECTION_FOOTER: u8 = 0x7e;

const FLAG_ZERO: u64 = 0x02;
const FLAG_MEM_SIZE: u64 = 0x04;
const FLAG_PAGE: u64 = 0x08;
const FLAG_EOS: u64 = 0x10;
const FLAG_CONTINUE: u64 = 0x20;
const FLAG_XBZRLE: u64 = 0x40;
const FLAG_HOOK: u64 = 0x80;
const FLAG_COMPRESS_PAGE: u64 = 0x100;

const CMD_OPEN_RETURN_PATH: u16 = 1;
const CMD_PING: u16 = 3;

/// Most RAM blocks a stream may list (a PC machine has about ten).
const MAX_BLOCKS: usize = 4096;

/// One RAM block of the stream's setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// QEMU's name of it (`pc.ram`, `/rom@etc/acpi/tables`).
    pub name: String,
    /// Its length in bytes (a whole number of pages).
    pub len: u64,
    /// Its first page in HDE's image of the guest's RAM: the blocks one after the other, in
    /// the order of the setup.
    pub first_page: u64,
}

/// What [`Parser::next_item`] found; its bytes are in [`Parser::raw`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// Bytes that pass through as they are: the header, configuration, section headers,
    /// footers, commands.
    Framing,
    /// The RAM section's start: its blocks are known ([`Parser::blocks`]).
    Setup,
    /// A page record's header; the page's body follows it in the stream (in a source stream
    /// [`Parser::page`] holds it; a skeleton leaves it out).
    Page {
        /// The page in the image of all blocks.
        index: u64,
    },
    /// A zero page: the record whole (QEMU fills the page with `fill`).
    Zero {
        /// The page in the image of all blocks.
        index: u64,
        /// The byte QEMU fills it with (0 from every QEMU this was written against).
        fill: u8,
    },
    /// The end of a part of the RAM section; `last`: of the section, so device state follows.
    PartEnd {
        /// The RAM section's end (`QEMU_VM_SECTION_END`) rather than a part of it.
        last: bool,
    },
    /// Device state and the end of the stream, after RAM: passed through unparsed.
    Tail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Top,
    /// After the end of a part: an optional footer, then the top level or the tail.
    Footer {
        id: u32,
        then_tail: bool,
    },
    Pages {
        last: bool,
    },
    Tail,
}

/// Not enough bytes yet.
struct Need;

enum Fail {
    Need,
    Bad(String),
    /// Nothing consumed; go on in this state (a section without a footer).
    Skip(State),
}

impl From<Need> for Fail {
    fn from(_: Need) -> Self {
        Fail::Need
    }
}

struct Cur<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cur<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Need> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len()).ok_or(Need)?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, Need> {
        Ok(self.bytes(1)?[0])
    }
    fn peek(&self) -> Result<u8, Need> {
        self.b.get(self.at).copied().ok_or(Need)
    }
    fn be16(&mut self) -> Result<u16, Need> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn be32(&mut self) -> Result<u32, Need> {
        let mut a = [0; 4];
        a.copy_from_slice(self.bytes(4)?);
        Ok(u32::from_be_bytes(a))
    }
    fn be64(&mut self) -> Result<u64, Need> {
        let mut a = [0; 8];
        a.copy_from_slice(self.bytes(8)?);
        Ok(u64::from_be_bytes(a))
    }
    /// A string of a length byte and that many bytes (QEMU's idstr).
    fn idstr(&mut self) -> Result<&'a [u8], Need> {
        let n = self.u8()?;
        self.bytes(usize::from(n))
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The incremental parser of one migration stream (see the module's documentation).
#[derive(Debug)]
pub struct Parser {
    bodies: bool,
    max_ram: u64,
    buf: Vec<u8>,
    pos: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    state: State,
    ram_id: Option<u32>,
    blocks: Vec<Block>,
    current: Option<usize>,
    total_pages: u64,
    raw: Vec<u8>,
    page: Vec<u8>,
}

impl Parser {
    /// A parser of a source stream (page bodies present) whose RAM may be at most `max_ram`
    /// bytes.
    pub fn source(max_ram: u64) -> Self {
        Parser::new(true, max_ram)
    }

    /// A parser of a skeleton: the stream without its pages' bodies.
    pub fn skeleton(max_ram: u64) -> Self {
        Parser::new(false, max_ram)
    }

    fn new(bodies: bool, max_ram: u64) -> Self {
        Parser {
            bodies,
            max_ram,
            buf: Vec::new(),
            pos: 0,
            base: 0,
            state: State::Header,
            ram_id: None,
            blocks: Vec::new(),
            current: None,
            total_pages: 0,
            raw: Vec::new(),
            page: Vec::new(),
        }
    }

    /// Gives the parser the stream's next bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.base += self.pos as u64;
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes fed and not yet returned in an item.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The bytes of the item [`next_item`](Self::next_item) returned last, as they are in the stream
    /// (a page record's header without its body).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The body of the [`Item::Page`] returned last (source streams only).
    pub fn page(&self) -> &[u8] {
        &self.page
    }

    /// The RAM blocks of the setup, once [`Item::Setup`] was returned.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// Pages of all blocks together: the length of HDE's image of the guest's RAM.
    pub fn total_pages(&self) -> u64 {
        self.total_pages
    }

    /// The stream has reached the device state after RAM (so it may end there).
    pub fn in_tail(&self) -> bool {
        self.state == State::Tail
    }

    /// Checks that the stream may end where it is: after the RAM section, nothing half read.
    pub fn finish(&self) -> Result<()> {
        if self.state != State::Tail || self.pending() > 0 {
            return Err(Error::Truncated { offset: self.offset() });
        }
        Ok(())
    }

    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// The next whole item, or `None` until more bytes are fed.
    pub fn next_item(&mut self) -> Result<Option<Item>> {
        loop {
            match self.step() {
                Err(Fail::Skip(state)) => self.state = state,
                Ok(item) => return Ok(item),
                Err(Fail::Need) => return Ok(None),
                Err(Fail::Bad(what)) => return Err(Error::Stream { offset: self.offset(), what }),
            }
        }
    }

    fn step(&mut self) -> Result<Option<Item>, Fail> {
        self.raw.clear();
        if self.state == State::Tail {
            if self.pending() == 0 {
                return Ok(None);
            }
            self.raw.extend_from_slice(&self.buf[self.pos..]);
            self.pos = self.buf.len();
            return Ok(Some(Item::Tail));
        }
        let buf = std::mem::take(&mut self.buf);
        let mut cur = Cur { b: &buf[self.pos..], at: 0 };
        let parsed = self.item(&mut cur);
        let used = cur.at;
        let result = match parsed {
            Ok((item, state)) => {
                self.raw.extend_from_slice(&buf[self.pos..self.pos + used]);
                if let Item::Page { .. } = item {
                    if self.bodies {
                        // The body is not part of the raw bytes: the receiver supplies it.
                        let body_start = self.raw.len() - PAGE;
                        self.page.clear();
                        self.page.extend_from_slice(&self.raw[body_start..]);
                        self.raw.truncate(body_start);
                    }
                }
                self.pos += used;
                self.state = state;
                Ok(Some(item))
            }
            Err(e) => Err(e),
        };
        self.buf = buf;
        result
    }

    fn item(&mut self, c: &mut Cur<'_>) -> Result<(Item, State), Fail> {
        match self.state {
            State::Header => {
                let magic = c.be32()?;
                let version = c.be32()?;
                if magic != FILE_MAGIC {
                    return Err(Fail::Bad(format!("not a QEMU migration stream (magic {magic:#010x})")));
                }
                if version != FILE_VERSION {
                    return Err(Fail::Bad(format!("stream version {version}, this parser reads {FILE_VERSION}")));
                }
                Ok((Item::Framing, State::Top))
            }
            State::Top => self.top(c),
            State::Footer { id, then_tail } => {
                let next = if then_tail { State::Tail } else { State::Top };
                if c.peek()? != SECTION_FOOTER {
                    // No footer (machine types before 2.6): nothing consumed.
                    return Err(Fail::Skip(next));
                }
                c.u8()?;
                let got = c.be32()?;
                if got != id {
                    return Err(Fail::Bad(format!("footer of section {got} where section {id} ended")));
                }
                Ok((Item::Framing, next))
            }
            State::Pages { last } => self.page_record(c, last),
            State::Tail => Err(Fail::Bad("internal: tail parsed as items".into())),
        }
    }

    fn top(&mut self, c: &mut Cur<'_>) -> Result<(Item, State), Fail> {
        let kind = c.u8()?;
        match kind {
            CONFIGURATION => {
                let len = c.be32()?;
                if len > 256 {
                    return Err(Fail::Bad(format!("configuration name of {len} bytes")));
                }
                c.bytes(len as usize)?;
                while c.peek()? == SUBSECTION {
                    c.u8()?;
                    let name = text(c.idstr()?);
                    let _version = c.be32()?;
                    match name.as_str() {
                        "configuration/target-page-bits" => {
                            let bits = c.be32()?;
                            if 1usize.checked_shl(bits) != Some(PAGE) {
                                return Err(Fail::Bad(format!(
                                    "target pages of 2^{bits} bytes; HDE reads 4 KiB pages"
                                )));
                            }
                        }
                        "configuration/capabilities" => {
                            let n = c.be32()?;
                            if n > 256 {
                                return Err(Fail::Bad(format!("{n} capabilities in the configuration")));
                            }
                            if n > 0 {
                                // QEMU lists only capabilities that change the stream
                                // (x-ignore-shared), and this parser reads none of them.
                                let cap = text(c.idstr()?);
                                return Err(Fail::Bad(format!(
                                    "capability {cap:?}: not supported with HDE in the path"
                                )));
                            }
                        }
                        "configuration/uuid" => {
                            c.bytes(16)?;
                        }
                        other => return Err(Fail::Bad(format!("configuration subsection {other:?}"))),
                    }
                }
                Ok((Item::Framing, State::Top))
            }
            SECTION_START => {
                let id = c.be32()?;
                let name = text(c.idstr()?);
                let _instance = c.be32()?;
                let version = c.be32()?;
                if name != "ram" {
                    return Err(Fail::Bad(format!(
                        "live section {name:?}: only RAM may be migrated live through HDE (no block migration, dirty bitmaps or VFIO)"
                    )));
                }
                if self.ram_id.is_some() {
                    return Err(Fail::Bad("a second RAM section".into()));
                }
                if version != 4 {
                    return Err(Fail::Bad(format!("RAM section version {version}, this parser reads 4")));
                }
                self.setup(c)?;
                self.ram_id = Some(id);
                Ok((Item::Setup, State::Footer { id, then_tail: false }))
            }
            SECTION_PART | SECTION_END => {
                let id = c.be32()?;
                if Some(id) != self.ram_id {
                    return Err(Fail::Bad(format!("a part of section {id}, which is not the RAM section")));
                }
                Ok((Item::Framing, State::Pages { last: kind == SECTION_END }))
            }
            COMMAND => {
                let cmd = c.be16()?;
                let len = c.be16()?;
                c.bytes(usize::from(len))?;
                match cmd {
                    CMD_OPEN_RETURN_PATH | CMD_PING => Ok((Item::Framing, State::Top)),
                    other => Err(Fail::Bad(format!(
                        "migration command {other} (postcopy, COLO or a packaged stream are not supported)"
                    ))),
                }
            }
            SECTION_FULL | VM_EOF | VMDESCRIPTION => {
                Err(Fail::Bad(format!("device state (section type {kind:#04x}) before the RAM section ended")))
            }
            other => Err(Fail::Bad(format!("unknown section type {other:#04x}"))),
        }
    }

    fn setup(&mut self, c: &mut Cur<'_>) -> Result<(), Fail> {
        let v = c.be64()?;
        if v & !PAGE_MASK != FLAG_MEM_SIZE {
            return Err(Fail::Bad(format!("RAM setup starts with flags {:#x}, not MEM_SIZE", v & !PAGE_MASK)));
        }
        let total = v & PAGE_MASK;
        if total > self.max_ram {
            return Err(Fail::Bad(format!("{total} bytes of RAM, more than the limit of {}", self.max_ram)));
        }
        let mut blocks = Vec::new();
        let mut sum = 0u64;
        while sum < total {
            if blocks.len() == MAX_BLOCKS {
                return Err(Fail::Bad(format!("more than {MAX_BLOCKS} RAM blocks")));
            }
            let name = text(c.idstr()?);
            let len = c.be64()?;
            if len % PAGE as u64 != 0 || len == 0 {
                return Err(Fail::Bad(format!("RAM block {name:?} of {len} bytes, not a whole number of pages")));
            }
            if blocks.iter().any(|b: &Block| b.name == name) {
                return Err(Fail::Bad(format!("RAM block {name:?} listed twice")));
            }
            let end = sum.checked_add(len).filter(|&e| e <= total);
            let Some(end) = end else {
                return Err(Fail::Bad(format!("RAM blocks longer than the {total} bytes announced")));
            };
            blocks.push(Block { name, len, first_page: sum / PAGE as u64 });
            sum = end;
        }
        let eos = c.be64()?;
        if eos != FLAG_EOS {
            return Err(Fail::Bad(format!(
                "RAM setup ends with {eos:#x}, not EOS (postcopy or x-ignore-shared records are not supported)"
            )));
        }
        self.blocks = blocks;
        self.total_pages = total / PAGE as u64;
        Ok(())
    }

    fn page_record(&mut self, c: &mut Cur<'_>, last: bool) -> Result<(Item, State), Fail> {
        let v = c.be64()?;
        let (addr, flags) = (v & PAGE_MASK, v & !PAGE_MASK);
        let here = State::Pages { last };
        if flags == FLAG_EOS {
            let id = self.ram_id.unwrap_or_default();
            return Ok((Item::PartEnd { last }, State::Footer { id, then_tail: last }));
        }
        let block = if flags & FLAG_CONTINUE == 0 {
            let name = c.idstr()?;
            let found = self.blocks.iter().position(|b| b.name.as_bytes() == name);
            let Some(found) = found else {
                return Err(Fail::Bad(format!("a page of unknown RAM block {:?}", text(name))));
            };
            // Only once the record is whole: a `Need` leaves the parser as it was.
            found
        } else {
            self.current.ok_or_else(|| Fail::Bad("a page continuing no block".into()))?
        };
        let b = &self.blocks[block];
        if addr >= b.len {
            return Err(Fail::Bad(format!("page at {addr:#x} beyond RAM block {:?} of {} bytes", b.name, b.len)));
        }
        let index = b.first_page + addr / PAGE as u64;
        let item = match flags & !FLAG_CONTINUE {
            FLAG_ZERO => Item::Zero { index, fill: c.u8()? },
            FLAG_PAGE => {
                if self.bodies {
                    c.bytes(PAGE)?;
                }
                Item::Page { index }
            }
            FLAG_XBZRLE => {
                return Err(Fail::Bad("an XBZRLE page: turn the xbzrle capability off with HDE in the path".into()))
            }
            FLAG_COMPRESS_PAGE => {
                return Err(Fail::Bad(
                    "a compressed page: turn the compress capability off with HDE in the path".into(),
                ))
            }
            FLAG_HOOK => return Err(Fail::Bad("an RDMA hook record".into())),
            other => return Err(Fail::Bad(format!("a RAM record with flags {other:#x}"))),
        };
        self.current = Some(block);
        Ok((item, here))
    }
}
