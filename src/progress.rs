//! Progress bar on stderr when it is a terminal.
