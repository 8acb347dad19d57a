//! What the service's tests share: the media fixtures of the engine's tests (one file,
//! `crates/convert/tests/engine/media.rs`), running nodes, an API client, a browser, an
//! SSE reader, a webhook receiver, a kube API stub and file helpers.

#![allow(dead_code, unreachable_pub)]

pub mod api;
pub mod browser;
pub mod files;
pub mod kube_stub;
#[path = "../../../crates/convert/tests/engine/media.rs"]
mod media;
pub mod pki;
pub mod receiver;
pub mod service;
pub mod sse;

pub use media::*;
