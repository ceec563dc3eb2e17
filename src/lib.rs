//! meterd: a durable metering agent for AWS Marketplace sellers.
//!
//! The binary in `main.rs` only parses the command line and calls into the modules here, so that
//! tests can drive every piece directly.

#![forbid(unsafe_code)]

pub mod aggregate;
pub mod duration;
pub mod emulator;
pub mod submit;
pub mod telemetry;
