//! mp4tomp3: turns MP4 files into MP3s.
//!
//! The conversion engine lives in [`convert`]; it is a plain library with no actors and no
//! I/O policy, used both by the `mp4tomp3 convert` command and (later) by the service's
//! converter actors.

pub mod actors;
pub mod app;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod convert;
pub mod fetch;
pub mod http;
pub mod mail;
pub mod memory;
pub mod metrics;
pub mod store;
pub mod webhook;
