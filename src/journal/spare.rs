//! Spare segments, zero-filled ahead of use by their own thread, so that the commit thread finds
//! the next segment ready when the current one is full.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use super::frame::{SEGMENT_HEADER, segment_header};
use super::recover::Segment;

/// The thread that makes spares, one at a time, in the order asked. Dropping it waits for the
/// spare being made: nothing writes in the journal's directory once its `Journal` is gone (a
/// journal opened again there would otherwise meet a spare renamed under its scan).
pub(super) struct Spares {
    dir: PathBuf,
    size: u64,
    /// `None` once dropping.
    requests: Mutex<Option<Sender<u64>>>,
    made: Mutex<Receiver<(u64, std::io::Result<Segment>)>>,
    thread: Option<JoinHandle<()>>,
}

impl Spares {
    pub fn start(dir: PathBuf, size: u64) -> Spares {
        let (requests, asked) = channel::<u64>();
        let (done, made) = channel();
        let (thread_dir, thread_size) = (dir.clone(), size);
        // If the thread cannot start, `take` makes the spare itself.
        let thread = std::thread::Builder::new()
            .name("meterd-spare".into())
            .spawn(move || {
                for index in asked {
                    if done.send((index, make(&thread_dir, index, thread_size))).is_err() {
                        return;
                    }
                }
            })
            .ok();
        Spares { dir, size, requests: Mutex::new(Some(requests)), made: Mutex::new(made), thread }
    }

    /// Asks for segment `index` to be made ahead of use.
    pub fn request(&self, index: u64) {
        if let Some(requests) = &*self.requests.lock().expect("spare requests lock") {
            let _ = requests.send(index);
        }
    }

    /// Segment `index`: the one asked for ahead, or made now.
    pub fn take(&self, index: u64) -> std::io::Result<Segment> {
        let made = self.made.lock().expect("spare results lock");
        while let Ok((made_index, result)) = made.recv() {
            if made_index == index {
                return result;
            }
        }
        drop(made);
        self.make_now(index)
    }

    /// Makes segment `index` in the calling thread.
    pub fn make_now(&self, index: u64) -> std::io::Result<Segment> {
        make(&self.dir, index, self.size)
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        // Closing the requests ends the thread's loop after the spare in hand.
        drop(self.requests.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes segment `index`: header, zeros to `size`, synced, renamed into place, directory synced.
fn make(dir: &Path, index: u64, size: u64) -> std::io::Result<Segment> {
    let path = dir.join(format!("{index:016x}.seg"));
    let tmp = dir.join(format!("{index:016x}.seg.tmp"));
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
    file.write_all(&segment_header(index, size))?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = size - SEGMENT_HEADER as u64;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()?;
    Ok(Segment { index, path, last_seq: None, highest_seq: None, end: SEGMENT_HEADER as u64 })
}
