//! Framing of the socket's byte stream into lines: bytes in, lines (or "too long" markers) out.
//!
//! A line ends at `\n` (a `\r` before it is dropped); blank lines are skipped. A line longer than
//! the limit is never buffered whole: once the buffered part of an unfinished line passes the
//! limit it is dropped, the rest is discarded as it arrives, and one [`Frame::Skipped`] marks its
//! end. An unfinished fragment at end of stream is never a frame: it may be a torn write. The
//! caller may stop taking frames part-way (its reply budget is spent) and take the rest later.

use std::ops::ControlFlow;

/// Bytes read at a time.
pub const READ_CHUNK: usize = 64 * 1024;

/// One unit the framer hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete line without its line ending.
    Line(&'a [u8]),
    /// A complete line of this many bytes, over the limit.
    TooLong(usize),
    /// The end of a line whose start was already dropped for being over the limit.
    Skipped,
}

/// The buffer of one connection.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    max_line: usize,
    /// Dropping the rest of an over-long line until its newline.
    skipping: bool,
}

impl Framer {
    pub fn new(max_line: usize) -> Self {
        Self { buf: Vec::with_capacity(READ_CHUNK), max_line, skipping: false }
    }

    /// The buffer to read into, with room for at least a quarter chunk.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        &mut self.buf
    }

    /// Hands the complete frames in the buffer to `each`, in order, until `each` breaks or none
    /// is left; then keeps only what was not taken (an unfinished rest is dropped if it is already
    /// over the limit). Returns whether `each` broke off, with complete frames perhaps left.
    pub fn frames(&mut self, mut each: impl FnMut(Frame<'_>) -> ControlFlow<()>) -> bool {
        let mut start = 0;
        while let Some(at) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let line = &self.buf[start..start + at];
            start += at + 1;
            let frame = if std::mem::take(&mut self.skipping) {
                Frame::Skipped
            } else {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if line.len() > self.max_line { Frame::TooLong(line.len()) } else { Frame::Line(line) }
            };
            if each(frame).is_break() {
                self.buf.drain(..start);
                return true;
            }
        }
        self.buf.drain(..start);
        if self.buf.len() > self.max_line {
            self.skipping = true;
        }
        if self.skipping {
            self.buf.clear();
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` one read at a time; every frame, owned.
    fn frames(max_line: usize, chunks: &[&[u8]]) -> Vec<Result<Vec<u8>, Option<usize>>> {
        let mut framer = Framer::new(max_line);
        let mut out = Vec::new();
        for chunk in chunks {
            framer.buffer().extend_from_slice(chunk);
            framer.frames(|frame| {
                out.push(match frame {
                    Frame::Line(line) => Ok(line.to_vec()),
                    Frame::TooLong(len) => Err(Some(len)),
                    Frame::Skipped => Err(None),
                });
                ControlFlow::Continue(())
            });
        }
        out
    }

    #[test]
    fn lines_end_at_newlines_across_reads() {
        assert_eq!(
            frames(16, &[b"ab", b"c\nde\r\n\n  \r\nf", b"g\n"]),
            [Ok(b"abc".to_vec()), Ok(b"de".to_vec()), Ok(b"fg".to_vec())]
        );
    }

    #[test]
    fn an_unfinished_fragment_is_never_a_frame() {
        assert_eq!(frames(16, &[b"one\ntwo"]), [Ok(b"one".to_vec())]);
    }

    #[test]
    fn a_line_at_the_limit_passes_and_one_byte_more_is_too_long() {
        assert_eq!(
            frames(4, &[b"abcd\nabcde\nok\n"]),
            [Ok(b"abcd".to_vec()), Err(Some(5)), Ok(b"ok".to_vec())]
        );
    }

    #[test]
    fn a_long_line_spread_over_reads_is_dropped_as_it_arrives() {
        let mut framer = Framer::new(4);
        let mut seen = Vec::new();
        for chunk in [&b"abcdef"[..], b"ghijkl", b"mn\nok\n"] {
            framer.buffer().extend_from_slice(chunk);
            framer.frames(|frame| {
                seen.push(format!("{frame:?}"));
                ControlFlow::Continue(())
            });
            assert!(framer.buf.len() <= 4, "the over-long line is not kept");
        }
        assert_eq!(seen, ["Skipped", "Line([111, 107])"]);
    }

    #[test]
    fn frames_left_when_the_caller_stops_come_next_time() {
        let mut framer = Framer::new(16);
        framer.buffer().extend_from_slice(b"one\ntwo\nthree\nfou");
        let mut seen = Vec::new();
        let mut take = |framer: &mut Framer, most: usize| {
            framer.frames(|frame| {
                seen.push(format!("{frame:?}"));
                if seen.len() % most == 0 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
            })
        };
        assert!(take(&mut framer, 2), "stopped after two frames");
        assert!(!take(&mut framer, 2), "one frame was left, then none");
        framer.buffer().extend_from_slice(b"r\n");
        take(&mut framer, 2);
        assert_eq!(
            seen,
            [
                "Line([111, 110, 101])",
                "Line([116, 119, 111])",
                "Line([116, 104, 114, 101, 101])",
                "Line([102, 111, 117, 114])"
            ]
        );
    }

    #[test]
    fn the_next_line_after_a_skipped_one_is_whole() {
        assert_eq!(frames(4, &[b"toolongline", b"\nab\n"]), [Err(None), Ok(b"ab".to_vec())]);
    }
}
