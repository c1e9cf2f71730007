//! The SQLite work queue: the only module with SQL.
