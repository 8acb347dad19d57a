//! mp4tomp3: turns MP4 files into MP3s.
//!
//! The conversion engine is the `mp4tomp3-convert` crate (`crates/convert`), re-exported as
//! [`convert`]; it is a plain library with no actors and no I/O policy, used both by the
//! `mp4tomp3 convert` command and by the service's converter actors.

pub mod actors;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub use mp4tomp3_convert as convert;
pub mod fetch;
pub mod http;
pub mod mail;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod store;
pub mod view;
