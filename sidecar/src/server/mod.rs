//! What faces the network: the accept loops that serve the inbound, outbound and admin listeners
//! (`listener`, with `rewind` for a connection whose first bytes had to be read), and the admin
//! port's handlers (`admin`: probes, metrics, the config in force).
//! The top of the crate below `lib.rs`, which wires the listeners to the request path.

pub(crate) mod admin;
pub(crate) mod listener;
mod rewind;
