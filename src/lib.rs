//! meterd: a durable metering agent for AWS Marketplace sellers.
//!
//! Events flow one way through the stages: [`ingest`] (socket, framing, validation) → [`commit`]
//! (group commit into the [`outbox`], counting into [`aggregate`]'s open hours, sealing) →
//! [`submit`] (batches, retries, dead letters). [`daemon`] wires them together; `main.rs` only
//! parses the command line.

#![forbid(unsafe_code)]

pub mod admin;
pub mod aggregate;
pub mod cli;
pub mod clock;
pub mod commit;
pub mod config;
pub mod daemon;
pub mod duration;
pub mod emulator;
pub mod ingest;
pub mod model;
pub mod outbox;
pub mod submit;
pub mod systemd;
pub mod telemetry;
