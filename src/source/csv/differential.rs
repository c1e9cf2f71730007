//! The scanner against an independent RFC 4180 reader, the `csv` crate, over thousands of
//! generated files, each read with buffers of 1 to 9 bytes (and the real size): every record
//! boundary, every field's bytes and every record's first line must agree.
//!
//! Line numbers are not taken from the `csv` crate (its count is not the physical one on CR-only
//! and CRLF files): a record's first line is worked out here from the byte offset where it
//! starts, counting `\n`, `\r\n` and a bare `\r` as one line end each.
//!
//! Where the two readers differ on purpose, the test checks this reader's rule instead:
//! - **a blank line** is no record to the `csv` crate; the scanner reports it (one empty
//!   unquoted field) and the rows layer skips it, so such records are set aside before comparing;
//! - **text after a closing quote** (`"ab"c`): both readers take the field as `abc`; this
//!   reader also flags it (`after_quote`), on exactly the rows the generator wrote that way;
//! - **a quote still open at the end of the file** swallows the rest of the file into one field
//!   in the `csv` crate; this reader keeps the fields before it, keeps the quoted field's first
//!   line only, and reads on from the line after it. So: the fields before it agree, the `csv`
//!   crate's field starts with this reader's (then a line end, if the quote spans lines), and
//!   the records after it are the `csv` crate's reading of the file from that line on.

use std::io::Cursor;

use super::scanner::{Record, Scanned, Scanner};

/// Files generated per run of the test: each is read 10 times.
const FILES: u64 = 3_000;

/// A small deterministic generator (SplitMix64), so a failure names a seed that reproduces it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a [u8]]) -> &'a [u8] {
        items[self.below(items.len() as u64) as usize]
    }
}

const EOLS: [&[u8]; 3] = [b"\n", b"\r\n", b"\r"];

/// A generated file, and for each row written whether it is a blank line and whether it has text
/// after a closing quote.
struct Generated {
    bytes: Vec<u8>,
    rows: Vec<RowShape>,
    /// A quote was put at a field's start that may never close: rows no longer map one-to-one
    /// to records, and only the comparison with the `csv` crate applies.
    stray_quote: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct RowShape {
    blank: bool,
    after_quote: bool,
}

fn generate(seed: u64) -> Generated {
    let mut rng = Rng(seed);
    let mut bytes = Vec::new();
    let mut rows = Vec::new();
    let row_count = 1 + rng.below(8);
    // A width most rows have, and some rows that do not.
    let width = 1 + rng.below(4);
    for row in 0..row_count {
        let shape = match rng.below(12) {
            0 => RowShape {
                blank: true,
                after_quote: false,
            },
            1 => {
                bytes.extend_from_slice(rng.pick(&[b" ", b"\t", b"  "]));
                RowShape {
                    blank: false,
                    after_quote: false,
                }
            }
            2 => {
                bytes.extend_from_slice(b"\"\"");
                RowShape {
                    blank: false,
                    after_quote: false,
                }
            }
            _ => {
                let fields = if rng.below(4) == 0 {
                    1 + rng.below(5)
                } else {
                    width
                };
                let mut after_quote = false;
                let mut all_empty_unquoted = true;
                for f in 0..fields {
                    if f > 0 {
                        bytes.push(b',');
                    }
                    match rng.below(5) {
                        0 | 1 => {
                            let text = unquoted(&mut rng);
                            all_empty_unquoted &= text.is_empty();
                            bytes.extend_from_slice(&text);
                        }
                        2 | 3 => {
                            all_empty_unquoted = false;
                            quoted(&mut rng, &mut bytes);
                        }
                        _ => {
                            all_empty_unquoted = false;
                            quoted(&mut rng, &mut bytes);
                            let tail: &[u8] = rng.pick(&[b"x", b" ", b"b\"", b"zz"]);
                            bytes.extend_from_slice(tail);
                            after_quote = true;
                        }
                    }
                }
                RowShape {
                    blank: fields == 1 && all_empty_unquoted,
                    after_quote,
                }
            }
        };
        rows.push(shape);
        if row + 1 < row_count || rng.below(2) == 0 {
            bytes.extend_from_slice(rng.pick(&EOLS));
        }
    }
    let stray_quote = rng.below(6) == 0;
    if stray_quote {
        // An opening quote at a field start (or the file's start) that may never close.
        let starts: Vec<usize> = std::iter::once(0)
            .chain(
                bytes
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| matches!(b, b',' | b'\n' | b'\r'))
                    .map(|(i, _)| i + 1),
            )
            .collect();
        let at = starts[rng.below(starts.len() as u64) as usize];
        bytes.insert(at, b'"');
    }
    Generated {
        bytes,
        rows,
        stray_quote,
    }
}

fn unquoted(rng: &mut Rng) -> Vec<u8> {
    let len = rng.below(4);
    (0..len)
        .map(|_| rng.pick(&[b"a", b"b", b" ", b";"])[0])
        .collect()
}

/// A quoted field holding commas, doubled quotes and line ends of every kind.
fn quoted(rng: &mut Rng, out: &mut Vec<u8>) {
    out.push(b'"');
    for _ in 0..rng.below(6) {
        out.extend_from_slice(rng.pick(&[b"a", b",", b"\"\"", b"\n", b"\r\n", b"\r", b" "]));
    }
    out.push(b'"');
}

/// One record as the scanner read it.
#[derive(Debug)]
struct Ours {
    scanned: Scanned,
    fields: Vec<Vec<u8>>,
    quoted: bool,
}

fn scan(input: &[u8], capacity: usize) -> Vec<Ours> {
    let mut scanner = Scanner::new(Cursor::new(input), capacity).unwrap();
    let mut record = Record::default();
    let mut out = Vec::new();
    // Bounded: every record consumes at least one byte, and re-reads only go back into a
    // record that ended the file.
    for _ in 0..4 * input.len() + 4 {
        let Some(scanned) = scanner.next_record(&mut record).unwrap() else {
            return out;
        };
        assert!(!record.overflow);
        out.push(Ours {
            scanned,
            fields: record.iter().map(<[u8]>::to_vec).collect(),
            quoted: record.quoted,
        });
    }
    panic!("the scanner did not reach the end of {input:?}");
}

/// A blank line: what the `csv` crate does not report as a record.
fn is_blank(ours: &Ours) -> bool {
    ours.fields.len() == 1 && !ours.quoted && ours.fields[0].is_empty()
}

/// Line ends in `bytes`, `\r\n` counted once.
fn line_ends(bytes: &[u8]) -> u64 {
    let mut n = 0;
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'\n' if i > 0 && bytes[i - 1] == b'\r' => {}
            b'\n' | b'\r' => n += 1,
            _ => {}
        }
    }
    n
}

/// The `csv` crate's records of `input[offset..]`, with the physical line each starts on,
/// counting from `line` at `offset`.
fn reference(input: &[u8], offset: usize, line: u64) -> Vec<(u64, Vec<Vec<u8>>)> {
    let rest = &input[offset..];
    let mut reader = ::csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(rest);
    let mut out = Vec::new();
    for record in reader.byte_records() {
        let record = record.unwrap();
        // The position is where reading of the record began, before the blank lines it skipped.
        let mut start = record.position().unwrap().byte() as usize;
        while matches!(rest.get(start), Some(b'\r' | b'\n')) {
            start += 1;
        }
        out.push((
            line + line_ends(&rest[..start]),
            record.iter().map(<[u8]>::to_vec).collect(),
        ));
    }
    out
}

/// Compares the scanner's records (blank lines set aside) with the `csv` crate's from `offset`.
fn compare(input: &[u8], offset: usize, line: u64, ours: &[&Ours], what: &str) {
    let theirs = reference(input, offset, line);
    for (i, mine) in ours.iter().enumerate() {
        let Some((their_line, their_fields)) = theirs.get(i) else {
            panic!("{what}: extra record {mine:?}; the csv crate read {theirs:?}");
        };
        assert_eq!(
            mine.scanned.line, *their_line,
            "{what}: first line of {mine:?}"
        );
        let Some(bad) = &mine.scanned.bad_quote else {
            assert_eq!(&mine.fields, their_fields, "{what}: record {i}");
            continue;
        };
        // The rule for an unterminated quote (module doc).
        assert_eq!(
            i + 1,
            theirs.len(),
            "{what}: the csv crate ends at the open quote"
        );
        let k = bad.open.field;
        assert_eq!(mine.fields.len(), k + 1, "{what}: {mine:?}");
        assert_eq!(
            mine.fields[..k],
            their_fields[..k],
            "{what}: fields before the quote"
        );
        let swallowed = &their_fields[k];
        assert!(
            swallowed.starts_with(&mine.fields[k]),
            "{what}: {swallowed:?} starts with {:?}",
            mine.fields[k]
        );
        // Either the quote never spanned a line (this reader kept all of it), or it was cut at
        // its first line end.
        let tail = &swallowed[mine.fields[k].len()..];
        assert!(
            tail.is_empty() || [&b"\n"[..], b"\r"].iter().any(|eol| tail.starts_with(eol)),
            "{what}: the quote's first line ends where this reader cut it: {tail:?}"
        );
        let (resume_offset, resume_line) = bad.open.after_first_break;
        let resume_offset = resume_offset as usize;
        assert!(
            resume_offset > offset && resume_offset <= input.len(),
            "{what}"
        );
        compare(
            input,
            resume_offset,
            resume_line,
            &ours[i + 1..],
            &format!("{what}, read again from line {resume_line}"),
        );
        return;
    }
    assert_eq!(
        ours.len(),
        theirs.len(),
        "{what}: the csv crate read {theirs:?}"
    );
}

#[test]
fn the_scanner_reads_what_an_rfc_4180_reader_reads_at_every_buffer_size() {
    let mut stray_quote_files = 0;
    let mut after_quote_rows = 0;
    for seed in 0..FILES {
        let generated = generate(seed);
        let input = &generated.bytes[..];
        for capacity in (1..=9).chain([64 * 1024]) {
            let what = format!("seed {seed}, buffer {capacity}, input {input:?}");
            let all = scan(input, capacity);
            let records: Vec<&Ours> = all.iter().filter(|o| !is_blank(o)).collect();
            compare(input, 0, 1, &records, &what);
            if !generated.stray_quote {
                assert!(
                    records.iter().all(|o| o.scanned.bad_quote.is_none()),
                    "{what}"
                );
                let expected: Vec<bool> = generated
                    .rows
                    .iter()
                    .filter(|r| !r.blank)
                    .map(|r| r.after_quote)
                    .collect();
                let flagged: Vec<bool> = records
                    .iter()
                    .map(|o| o.scanned.after_quote.is_some())
                    .collect();
                assert_eq!(
                    flagged, expected,
                    "{what}: rows with text after a closing quote"
                );
            }
        }
        stray_quote_files += usize::from(generated.stray_quote);
        after_quote_rows += generated.rows.iter().filter(|r| r.after_quote).count();
    }
    // The generator reached the cases the rules are about.
    assert!(stray_quote_files > 100, "{stray_quote_files}");
    assert!(after_quote_rows > 100, "{after_quote_rows}");
}
