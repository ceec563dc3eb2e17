//! Submission to the Metering Service: the [`MeteringApi`] seam, the submit loop, and
//! RegisterUsage at start.

pub mod api;
mod lifecycle;
pub mod register;
#[cfg(test)]
mod scripted;
mod send;
pub mod size;
mod store;
mod submitter;
#[cfg(test)]
mod tests;

pub use api::{
    ApiFailure, Disposition, MeteringApi, RecordOutcome, Registration, ResolvedCustomer, SdkMeteringApi,
    StripEmptyFields, classify,
};
pub use lifecycle::Lifecycle;
pub use register::{RegisterRequest, RegistrationRefused, register};
pub use size::{MAX_BATCH_BYTES, MAX_BATCH_RECORDS};
pub use store::{Store, StoreError};
pub use submitter::{Control, Settings, Submitter};
