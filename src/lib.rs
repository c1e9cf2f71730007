//! b2b-convert: move a Microsoft Entra tenant's internal partner accounts to B2B collaboration.
//!
//! The data flow is **source → queue → workers (validate → invite → record) → report**, and the
//! modules are named after it. `graph` is the only code that speaks HTTP to Microsoft; `queue`
//! is the only code that speaks SQL; `emulator` is a simulated tenant sharing only `model`.

pub mod cli;
pub mod commands;
pub mod config;
pub mod drift;
pub mod email;
pub mod emulator;
pub mod exit;
pub mod graph;
pub mod item;
pub mod logging;
pub mod model;
pub mod profile;
pub mod progress;
pub mod queue;
pub mod report;
pub mod source;
pub mod validate;
pub mod workers;
