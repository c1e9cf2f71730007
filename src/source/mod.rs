//! Sources feed the queue: a CSV file or a Graph query.
