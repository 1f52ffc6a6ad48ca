//! `docs/FORMAT.md` and the frame code must agree (in the manner of rust-analyzer's tidy
//! checks of its documentation): the version in the title, every fixed-size field of the round
//! header at the offset the table gives it, and the page hierarchy's streams in their order.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use std::path::PathBuf;

use hde_core::delta::{BaselineId, RoundHeader, PAGE_LAYOUT};
use hde_core::frame::{self, FrameHeader};

fn format_doc() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/FORMAT.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rows of the table that follows `heading`: (offset, size, field), offsets and sizes as
/// written.
fn table(doc: &str, heading: &str) -> Vec<(String, String, String)> {
    let start = doc.find(heading).unwrap_or_else(|| panic!("FORMAT.md has no {heading:?}"));
    doc[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // the header row and its rule
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            (cells[0].to_owned(), cells[1].to_owned(), cells[2].to_owned())
        })
        .collect()
}

#[test]
fn the_title_names_the_version_this_build_writes() {
    let doc = format_doc();
    let title = doc.lines().next().unwrap();
    assert_eq!(title, format!("# HDE frame format, version {}", frame::VERSION));
}

#[test]
fn every_fixed_header_field_is_where_the_table_says() {
    let header = FrameHeader {
        key: "k".into(),
        round: RoundHeader {
            seq: 0x1111_2222_3333_4444,
            base: Some(BaselineId { seq: 0x5555_6666_7777_8888, checksum: 0x9999_aaaa_bbbb_cccc }),
            image_len: 3 << 20,
            page_size: 4096,
            segment_size: 1 << 20,
            checksum: 0xdddd_eeee_ffff_0123,
        },
        base_key: None,
        streams: 4,
    };
    let bytes = frame::encode_header(&header).unwrap();
    let r = &header.round;
    let base = r.base.unwrap();
    let expected: [(&str, Vec<u8>); 13] = [
        ("magic", frame::MAGIC.to_vec()),
        ("version", vec![frame::VERSION]),
        ("flags", vec![0]),
        ("page_log2", vec![12]),
        ("key_len", vec![1]),
        ("segment_size", r.segment_size.to_le_bytes().to_vec()),
        ("segment_count", 3u32.to_le_bytes().to_vec()),
        ("image_len", r.image_len.to_le_bytes().to_vec()),
        ("seq", r.seq.to_le_bytes().to_vec()),
        ("base_seq", base.seq.to_le_bytes().to_vec()),
        ("base_checksum", base.checksum.to_le_bytes().to_vec()),
        ("checksum", r.checksum.to_le_bytes().to_vec()),
        ("stream_count", vec![4]),
    ];
    let rows = table(&format_doc(), "## Round header");
    for (field, value) in expected {
        let (offset, size, _) = rows
            .iter()
            .find(|(_, _, f)| f == field)
            .unwrap_or_else(|| panic!("FORMAT.md's round header has no field {field}"));
        let (offset, size): (usize, usize) = (offset.parse().unwrap(), size.parse().unwrap());
        assert_eq!(size, value.len(), "{field}: FORMAT.md says {size} bytes");
        assert_eq!(bytes[offset..offset + size], value[..], "{field} is not at offset {offset}");
    }
    let (key_at, _, _) = rows.iter().find(|(_, _, f)| f == "key").unwrap();
    assert_eq!(key_at.parse::<usize>().unwrap(), frame::HEADER_FIXED);
    assert_eq!(bytes[frame::HEADER_FIXED], b'k');
}

#[test]
fn the_page_streams_are_named_in_their_order() {
    let names: Vec<String> = PAGE_LAYOUT.iter().map(|s| format!("`{}`", s.name)).collect();
    let doc = format_doc();
    assert!(doc.contains(&names.join(", ")), "FORMAT.md does not list the page streams as {}", names.join(", "));
    for spec in PAGE_LAYOUT {
        assert!(doc.contains(&format!("* **{}**:", spec.name)), "FORMAT.md does not describe stream {}", spec.name);
    }
    assert_eq!(frame::segment_fixed(PAGE_LAYOUT.len()), 60, "FORMAT.md: 4 + 12 x N + 8");
}
