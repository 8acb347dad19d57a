//! mp4tomp3: turns MP4 files into MP3s. One binary; its nodes form an actor cluster.
//!
//! The layers, top to bottom (nothing imports a layer above it):
//!
//! | layer | modules | where to find |
//! |---|---|---|
//! | the node's wiring | [`cli`], [`node`], [`backup`] | commands; start-up and shutdown order, the supervisor, the gateway actor; backup and restore of a data dir |
//! | HTTP | [`http`] | one module per resource (jobs, multipart uploads, resumable uploads (tus), downloads, archive, auth, session, webhooks, quota, events, cluster, seed routes); errors and their codes in `http/error.rs`; the OpenAPI document |
//! | roles | [`actors`] | `auth` (users, tokens), `request` (jobs: intake, lifecycle, placement, handoff, resumable uploads, events, quotas; `request::client` reaches any job, `request::resumable::client` any resumable upload), `converter` (conversion slots, other nodes' conversions), `notifier` (mail, webhooks) |
//! | shared types | [`view`], [`store`], [`auth`], [`mail`], [`metrics`] | a job as the API shows it; SQLite and files; passwords and JWT; emails; metrics |
//! | underneath | [`cluster`], [`meta`], [`fetch`], [`config`], [`convert`], [`memory`], [`clock`] | the mesh (sessions, heartbeats, fencing, TLS, kube discovery); replicated metadata (Raft: key claims, the job directory, MP3 copies); URL imports behind the address guard; settings; the conversion engine (`crates/convert`, no actors, no I/O policy); the node's time (the wall clock without its jumps) |

pub mod actors;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub use mp4tomp3_convert as convert;
pub mod fetch;
pub mod http;
pub mod mail;
pub mod memory;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod store;
pub mod view;
