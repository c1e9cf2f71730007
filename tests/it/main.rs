//! The integration tests, one binary: each file of `tests/it/` is a module, sharing
//! `common` (the emulator harness, running the binary, the queue and the emulator's records as
//! tests read them, raw Graph calls, the HTML checker). One binary links once
//! instead of once per file (docs/performance.md, "One test binary").

mod common;

mod apply;
mod auth;
mod backout;
mod converted_back;
mod emulator;
mod emulator_credentials;
mod emulator_graph_shapes;
mod emulator_tls;
mod emulator_writes;
mod facts;
mod help;
mod lease;
mod live;
mod pacing;
mod pipeline;
mod reads;
mod report_scale;
mod reports;
mod retire;
mod retire_preflight;
mod scripts;
mod sources;
mod steps;
mod track;
mod transport;
