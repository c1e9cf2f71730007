//! The Graph client: HTTP, authentication, retries and throttling. Nothing else builds URLs.
