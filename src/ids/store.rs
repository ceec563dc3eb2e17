//! The id files in `<data_dir>/ids/`: `<number>.run` for each run, `<number>.log` for the open
//! segment (and for a frozen one whose run is not written yet), numbers as 16 hex digits.
//!
//! | step of a checkpoint | order | why |
//! |---|---|---|
//! | each frozen segment: `<n>.run.tmp` written, synced, renamed to `<n>.run`; then the directory synced | before the checkpoint is written | the checkpoint lets the journal go, and with it the events that carry these ids |
//! | the open segment's new ids appended to its log, synced (the directory too when the log is new) | before the checkpoint is written | the same |
//! | logs of segments now in runs, and expired runs, removed | after the checkpoint | a crash before leaves a log beside its run (removed at the next start) or an expired run (expired again) |
//!
//! At start a `.tmp` file is an unfinished run (removed); a log beside a run of its number was
//! about to be removed (removed); a log is read up to its first incomplete block and cut there.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::book::{IdChanges, Loaded};
use super::log;
use super::run::{Run, RunBytes, RunError};
use super::segment::Segment;

/// Why the id files cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[error("id file {path}: {reason}")]
pub struct StoreError {
    pub path: PathBuf,
    pub reason: String,
}

fn error(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |err| StoreError { path: path.to_path_buf(), reason: err.to_string() }
}

#[derive(Debug)]
pub struct IdFiles {
    dir: PathBuf,
    /// The open segment's log, appended to by checkpoints.
    log: Mutex<Option<(u64, File)>>,
    bytes: AtomicU64,
}

/// A run's file, open or to be opened for each read ([`super::run::RunBytes::release`]).
#[derive(Debug)]
struct RunFile {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl RunBytes for RunFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let file = self.file.lock().expect("run file lock");
        match &*file {
            Some(file) => file.read_exact_at(buf, offset),
            None => File::open(&self.path)?.read_exact_at(buf, offset),
        }
    }

    fn release(&self) {
        *self.file.lock().expect("run file lock") = None;
    }
}

fn name(number: u64, kind: &str) -> String {
    format!("{number:016x}.{kind}")
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(error(dir))
}

impl IdFiles {
    /// Opens (creating) the directory and reads every run and log in it. An offline read
    /// (`writable` false) changes nothing on disk.
    pub fn open(dir: &Path, writable: bool) -> Result<(IdFiles, Loaded), StoreError> {
        if writable {
            std::fs::create_dir_all(dir).map_err(error(dir))?;
            sync_dir(dir.parent().unwrap_or(dir))?;
        }
        let mut runs = BTreeSet::new();
        let mut logs = BTreeSet::new();
        if dir.exists() {
            for entry in std::fs::read_dir(dir).map_err(error(dir))? {
                let path = entry.map_err(error(dir))?.path();
                let file = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let parsed =
                    file.split_once('.').and_then(|(n, kind)| Some((u64::from_str_radix(n, 16).ok()?, kind)));
                match parsed {
                    Some((n, "run")) => drop(runs.insert(n)),
                    Some((n, "log")) => drop(logs.insert(n)),
                    _ if writable && file.ends_with(".tmp") => {
                        std::fs::remove_file(&path).map_err(error(&path))?
                    }
                    _ => {}
                }
            }
        }
        let files = IdFiles { dir: dir.to_path_buf(), log: Mutex::new(None), bytes: AtomicU64::new(0) };
        let mut loaded = Loaded::default();
        for &number in &runs {
            loaded.runs.push(files.load_run(number)?);
        }
        for number in logs {
            let path = dir.join(name(number, "log"));
            if runs.contains(&number) {
                if writable {
                    std::fs::remove_file(&path).map_err(error(&path))?;
                }
                continue;
            }
            if let Some(segment) = files.load_log(number, writable)? {
                loaded.segments.push(segment);
            }
        }
        Ok((files, loaded))
    }

    fn load_run(&self, number: u64) -> Result<Run, StoreError> {
        let path = self.dir.join(name(number, "run"));
        let file = File::open(&path).map_err(error(&path))?;
        let len = file.metadata().map_err(error(&path))?.len();
        let source = RunFile { path: path.clone(), file: Mutex::new(Some(file)) };
        let run = Run::load(number, Box::new(source), len).map_err(|err| match err {
            RunError::Corrupt(reason) => StoreError { path: path.clone(), reason },
            RunError::Io(err) => error(&path)(err),
        })?;
        self.bytes.fetch_add(len, Ordering::Relaxed);
        Ok(run)
    }

    /// Reads a log back into its segment, cutting a torn tail off (when `writable`).
    fn load_log(&self, number: u64, writable: bool) -> Result<Option<Segment>, StoreError> {
        let path = self.dir.join(name(number, "log"));
        let bytes = std::fs::read(&path).map_err(error(&path))?;
        let decoded = log::decode(&bytes).map_err(|reason| StoreError { path: path.clone(), reason })?;
        if writable && decoded.valid < bytes.len() {
            if decoded.entries.is_empty() {
                std::fs::remove_file(&path).map_err(error(&path))?;
                return Ok(None);
            }
            let file = OpenOptions::new().write(true).open(&path).map_err(error(&path))?;
            file.set_len(decoded.valid as u64).and_then(|()| file.sync_data()).map_err(error(&path))?;
        }
        if decoded.entries.is_empty() {
            return Ok(None);
        }
        self.bytes.fetch_add(decoded.valid as u64, Ordering::Relaxed);
        let mut segment = Segment::new(number);
        for entry in &decoded.entries {
            segment.insert(*entry, decoded.first_at);
        }
        segment.last_at = decoded.last_at;
        segment.logged = segment.len();
        Ok(Some(segment))
    }

    /// Writes a checkpoint's ids (the first two steps of the table above) and returns the runs
    /// written.
    pub fn write(&self, changes: &IdChanges) -> Result<Vec<Run>, StoreError> {
        let mut runs = Vec::with_capacity(changes.freeze.len());
        for segment in &changes.freeze {
            let image = Run::build(segment.number, segment.entries(), segment.first_at, segment.last_at);
            let path = self.dir.join(name(segment.number, "run"));
            let tmp = self.dir.join(name(segment.number, "run.tmp"));
            // Read back for lookups once it is a run.
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(error(&tmp))?;
            file.write_all(&image.bytes).and_then(|()| file.sync_all()).map_err(error(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(error(&path))?;
            self.bytes.fetch_add(image.bytes.len() as u64, Ordering::Relaxed);
            runs.push(image.into_run(Box::new(RunFile { path, file: Mutex::new(Some(file)) })));
        }
        if !runs.is_empty() {
            sync_dir(&self.dir)?;
        }
        if let Some(append) = &changes.append {
            let mut log = self.log.lock().expect("id log lock");
            if log.as_ref().is_none_or(|(number, _)| *number != append.number) {
                *log = Some((append.number, self.open_log(append.number)?));
            }
            let (_, file) = log.as_mut().expect("just opened");
            let path = self.dir.join(name(append.number, "log"));
            let block = log::encode(&append.entries, append.first_at, append.last_at);
            file.write_all(&block).and_then(|()| file.sync_data()).map_err(error(&path))?;
            self.bytes.fetch_add(block.len() as u64, Ordering::Relaxed);
        }
        Ok(runs)
    }

    /// The log of segment `number`, for appending: created with its header (and the directory
    /// synced) if it is new.
    fn open_log(&self, number: u64) -> Result<File, StoreError> {
        let path = self.dir.join(name(number, "log"));
        let mut file = OpenOptions::new().append(true).create(true).open(&path).map_err(error(&path))?;
        if file.metadata().map_err(error(&path))?.len() == 0 {
            file.write_all(&log::FILE_HEADER).and_then(|()| file.sync_data()).map_err(error(&path))?;
            self.bytes.fetch_add(log::FILE_HEADER.len() as u64, Ordering::Relaxed);
            sync_dir(&self.dir)?;
        }
        Ok(file)
    }

    /// The last step: logs of segments now in runs, and the files of expired ids, go.
    pub fn remove_settled(&self, changes: &IdChanges) -> Result<(), StoreError> {
        let logs = changes.freeze.iter().map(|s| name(s.number, "log"));
        let expired = changes.expired.iter().flat_map(|&n| [name(n, "run"), name(n, "log")]);
        let mut removed = false;
        for file in logs.chain(expired) {
            let path = self.dir.join(file);
            match std::fs::metadata(&path) {
                Ok(meta) => {
                    std::fs::remove_file(&path).map_err(error(&path))?;
                    self.bytes.fetch_sub(meta.len().min(self.bytes()), Ordering::Relaxed);
                    removed = true;
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(error(&path)(err)),
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        let mut log = self.log.lock().expect("id log lock");
        if log.as_ref().is_some_and(|(n, _)| changes.freeze.iter().any(|s| s.number == *n)) {
            *log = None;
        }
        Ok(())
    }

    /// Bytes the id files take.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::book::IdBook;
    use super::super::{IdHash, Seen};
    use super::*;

    fn id(n: u64) -> IdHash {
        IdHash::of(0, &n.to_string())
    }

    /// One checkpoint's id steps, as the outbox runs them.
    fn checkpoint(book: &mut IdBook, files: &IdFiles) {
        let changes = book.take_changes();
        let runs = files.write(&changes).unwrap();
        // A run is read from the file it was written to.
        for (run, segment) in runs.iter().zip(&changes.freeze) {
            for entry in segment.entries() {
                assert_eq!(run.find(&entry.hash).unwrap(), Some(entry.digest));
            }
        }
        book.install(runs);
        files.remove_settled(&changes).unwrap();
    }

    /// The files in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }

    /// A new data dir's id files and book.
    fn fresh() -> (tempfile::TempDir, IdFiles, IdBook) {
        let tmp = tempfile::tempdir().unwrap();
        let (files, loaded) = IdFiles::open(&tmp.path().join("ids"), true).unwrap();
        (tmp, files, IdBook::restore(loaded, 25 * 3600))
    }

    fn reopen(dir: &Path) -> IdBook {
        IdBook::restore(IdFiles::open(dir, true).unwrap().1, 25 * 3600)
    }

    #[test]
    fn a_restart_finds_every_id_a_checkpoint_wrote_and_a_torn_log_block_is_cut() {
        let (tmp, files, mut book) = fresh();
        let dir = tmp.path().join("ids");
        book.remember(id(1), 1, 3600);
        checkpoint(&mut book, &files);
        book.remember(id(2), 2, 3700);
        checkpoint(&mut book, &files);
        book.remember(id(3), 3, 7200);
        checkpoint(&mut book, &files);
        let names = names(&dir);
        assert_eq!(names, ["0000000000000001.run", "0000000000000002.log"]);
        let on_disk: u64 = names.iter().map(|n| std::fs::metadata(dir.join(n)).unwrap().len()).sum();
        assert_eq!(files.bytes(), on_disk);
        drop(files);
        // A block cut short by a crash: ids 4 and 5 were never covered by a checkpoint.
        let log = dir.join("0000000000000002.log");
        let whole = std::fs::metadata(&log).unwrap().len();
        let block =
            super::log::encode(&[super::super::segment::Entry { hash: id(4), digest: 4 }], 7200, 7200);
        let mut file = OpenOptions::new().append(true).open(&log).unwrap();
        file.write_all(&block[..block.len() - 3]).unwrap();
        let book = reopen(&dir);
        for n in 1..=3 {
            assert_eq!(book.check(&id(n), n as u32).unwrap(), Seen::Same, "id {n}");
        }
        assert_eq!(book.check(&id(4), 4).unwrap(), Seen::New);
        assert_eq!(std::fs::metadata(&log).unwrap().len(), whole, "the torn block is cut off");
    }

    #[test]
    fn leftovers_of_a_crash_between_steps_are_cleared_at_start() {
        let (tmp, files, mut book) = fresh();
        let dir = tmp.path().join("ids");
        book.remember(id(1), 1, 3600);
        checkpoint(&mut book, &files);
        book.expire(7200);
        // Written, but killed before the settled log went.
        let changes = book.take_changes();
        book.install(files.write(&changes).unwrap());
        std::fs::write(dir.join("0000000000000009.run.tmp"), b"half a run").unwrap();
        drop(files);
        let book = reopen(&dir);
        assert_eq!(book.check(&id(1), 1).unwrap(), Seen::Same);
        let names = names(&dir);
        assert_eq!(names, ["0000000000000001.run"]);
        let damaged = dir.join("0000000000000001.run");
        let mut bytes = std::fs::read(&damaged).unwrap();
        bytes[40] ^= 1;
        std::fs::write(&damaged, bytes).unwrap();
        let err = IdFiles::open(&dir, true).unwrap_err();
        assert_eq!(err.path, damaged);
        assert!(err.reason.contains("checksum"), "{err}");
    }
}
