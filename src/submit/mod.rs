//! Submission of sealed records to the Metering Service.

pub mod api;

pub use api::{ApiFailure, Disposition, MeteringApi, RecordOutcome, SdkMeteringApi, classify};
