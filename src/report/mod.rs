//! Reports for a change board and a service desk, rendered from the database alone.
