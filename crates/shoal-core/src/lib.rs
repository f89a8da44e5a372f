//! The pure core of shoal.
//!
//! Everything here is a function of its inputs: no file system, no network, no clock, no global state
//! (the one exception is the OS random source used to *generate* a new secret, behind
//! [`secret::ReadWriteSecret::generate`]). Higher layers — the index, the scanner, the engine, the
//! network — build on these types, never the other way round.

pub mod chunk;
pub mod ignore;
pub mod name;
pub mod resolve;
pub mod secret;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod version;
