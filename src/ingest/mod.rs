//! The ingest stage: a Unix stream socket speaking newline-delimited JSON. Each connection reads
//! lines, parses them, hands the well-formed events to the commit stage in one submission per read,
//! and answers every line in order once its event is durable (or refused).

mod event;
mod server;

pub use event::{AckId, ErrorCode, Event, EventParser, LineError, MAX_ID_BYTES, Rejection, Reply};
pub use server::{IngestServer, SharedParser, bind_socket, resolve_group};
