//! The service's integration tests, one binary (one link of the whole service), a module
//! per area. Most run the real `mp4tomp3` binary as separate processes (`common::service`);
//! the engine's own tests are in `crates/convert/tests/`.

mod common;

mod archive;
mod bounds;
mod cli;
mod clock;
mod cluster;
mod contract;
mod damaged;
mod kube;
mod manifests;
mod nemesis;
mod placement;
mod push;
mod quotas;
mod rolling;
mod scaling;
mod service;
mod storage;
mod supervision;
mod uploads;
mod users;
mod web;
