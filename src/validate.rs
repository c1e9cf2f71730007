//! Validation: a pure function from a user snapshot and tenant facts to a verdict.
