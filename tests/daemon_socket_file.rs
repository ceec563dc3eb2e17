//! The socket files under meterd's feet: a removed ingest or admin socket file is bound again, a
//! socket file replaced by another process's makes meterd not ready (and is bound again once the
//! path is free), and shutdown removes only the file meterd itself created.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::daemon::{Emu, Launch, Meterd, event};

/// Waits until `ready()` holds, checking every 50 ms.
fn wait_until(what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < within, "{what} did not happen within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether an event sent to `socket` is answered `ok`.
fn accepts_events(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else { return false };
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    writeln!(stream, "{}", event("111111111111", "requests", 1)).unwrap();
    let mut line = String::new();
    let _ = BufReader::new(stream).read_line(&mut line);
    line.contains("\"ok\":true")
}

fn error_logs(meterd: &Meterd, needle: &str) -> Vec<String> {
    meterd.logs().into_iter().filter(|l| l.contains("\"ERROR\"") && l.contains(needle)).collect()
}

#[test]
fn a_removed_socket_file_is_bound_again_and_logged() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let launch = Launch::new(dir.path(), &emu);
    let meterd = Meterd::start(Launch::new(dir.path(), &emu));
    assert!(accepts_events(&meterd.socket));

    std::fs::remove_file(&meterd.socket).unwrap();
    std::fs::remove_file(dir.path().join("admin.sock")).unwrap();
    wait_until("the ingest socket comes back", Duration::from_secs(10), || accepts_events(&meterd.socket));
    assert_eq!(error_logs(&meterd, "the ingest socket file").len(), 1, "{:#?}", meterd.logs());
    wait_until("the admin socket comes back", Duration::from_secs(10), || {
        Meterd::cli(&launch, &["status", "--json"]).0 == 0
    });
    assert_eq!(meterd.get("/readyz"), (200, "ready\n".to_string()));
    assert_eq!(meterd.metric("meterd_events_accepted_total"), 2.0);

    assert!(meterd.signal("TERM").success());
    assert!(!meterd_socket_exists(dir.path(), "meterd.sock"), "meterd removes the file it bound");
    assert!(!meterd_socket_exists(dir.path(), "admin.sock"));
}

fn meterd_socket_exists(dir: &Path, name: &str) -> bool {
    dir.join(name).symlink_metadata().is_ok()
}

#[test]
fn a_socket_file_replaced_by_another_process_is_not_ready_and_survives_shutdown() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu).start();
    let impostor_path = dir.path().join("impostor.sock");
    let impostor = UnixListener::bind(&impostor_path).unwrap();

    // Another process's socket takes the path in one step (rename), as a second meterd would
    // after the first one's file was removed.
    std::fs::rename(&impostor_path, &meterd.socket).unwrap();
    wait_until("/readyz fails", Duration::from_secs(10), || meterd.get("/readyz").0 == 503);
    let (_, body) = meterd.get("/readyz");
    assert!(body.contains("not ready: the ingest socket file"), "{body}");
    assert!(body.contains("was replaced by another file"), "{body}");
    assert_eq!(error_logs(&meterd, "was replaced by another file").len(), 1, "{:#?}", meterd.logs());

    // The other process gives the path up: meterd binds it again and is ready again.
    std::fs::rename(&meterd.socket, &impostor_path).unwrap();
    wait_until("/readyz answers 200 again", Duration::from_secs(10), || meterd.get("/readyz").0 == 200);
    assert!(accepts_events(&meterd.socket));

    // And takes it once more; meterd's shutdown leaves the other process's socket alone.
    std::fs::rename(&impostor_path, &meterd.socket).unwrap();
    wait_until("/readyz fails again", Duration::from_secs(10), || meterd.get("/readyz").0 == 503);
    let socket = meterd.socket.clone();
    assert!(meterd.signal("TERM").success());
    let _client = UnixStream::connect(&socket).expect("the other process's socket is still there");
    impostor.set_nonblocking(false).unwrap();
    let (_conn, _) = impostor.accept().expect("and it is the other process's");
}

#[test]
fn a_removed_socket_file_passed_by_systemd_is_reported_not_bound_again() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("meterd.sock");
    let passed = UnixListener::bind(&socket).unwrap();
    let meterd = Launch::new(dir.path(), &emu).activated(&passed).start();
    drop(passed);
    assert!(accepts_events(&socket));

    std::fs::remove_file(&socket).unwrap();
    wait_until("/readyz fails", Duration::from_secs(10), || meterd.get("/readyz").0 == 503);
    let (_, body) = meterd.get("/readyz");
    assert!(body.contains("was removed; it belongs to systemd (socket activation)"), "{body}");
    assert_eq!(error_logs(&meterd, "belongs to systemd").len(), 1, "{:#?}", meterd.logs());
    assert!(!meterd_socket_exists(dir.path(), "meterd.sock"), "systemd's socket is not bound again");
    assert!(meterd.signal("TERM").success());
}
