//! The ingest stage: a Unix stream socket speaking newline-delimited JSON. Each connection frames
//! lines, parses them, hands the well-formed events to the commit stage in one submission per
//! read, and answers every line in order once its event is durable (or refused). `http.rs` serves
//! the same lines over HTTP (`POST /v1/events`) for sidecars that share `localhost` but no volume.

mod event;
mod framing;
pub mod http;
mod reply;
mod server;

pub use event::{EventParser, LineError, MAX_ID_BYTES, Rejection};
pub use framing::{Frame, Framer};
pub use reply::{Reply, rejection};
pub use server::{IngestServer, SharedParser};
