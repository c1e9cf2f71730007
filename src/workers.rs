//! Workers: validate → invite → record, rate-limited and checkpointed.
