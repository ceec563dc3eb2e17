//! meterd: a durable metering agent for AWS Marketplace sellers.
//!
//! Events flow one way through the stages: [`ingest`] (socket, framing, validation) → [`commit`]
//! (group commit into the [`outbox`], counting into [`aggregate`]'s open hours, sealing) →
//! [`submit`] (batches, retries, dead letters). [`model`] holds the words they share and depends
//! on none of them; [`context`] is what every running stage carries (clock, metrics, health, the
//! fatal token). [`daemon`] wires and supervises the stages; `main.rs` only parses the command
//! line.

#![forbid(unsafe_code)]

pub mod admin;
pub mod aggregate;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod commit;
pub mod config;
pub mod context;
pub mod daemon;
pub mod duration;
pub mod emulator;
pub mod fleet;
pub mod ids;
pub mod ingest;
pub mod journal;
pub mod listen;
pub mod model;
pub mod notifications;
pub mod outbox;
pub mod submit;
pub mod systemd;
pub mod telemetry;
pub mod unix;
