//! The simulated tenant: a loopback HTTP server that behaves like Graph and the token endpoint.
