//! Sources feed the queue: a CSV file or a Graph query (`ingest` stores either in a run). Each yields [`crate::item::NewItem`]s;
//! a bad row is an item (blocked, `bad_input`), only an unreadable file is an error.

pub mod csv;

pub use self::csv::{CsvSource, SourceError};
pub mod ingest;
pub mod only;
