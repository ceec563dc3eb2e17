//! The first ten minutes of a new user: a configuration that cannot bill is refused with a pointer
//! to the sandbox, `meterd send` says what it waits for at a terminal (and how to start the
//! sandbox when no meterd listens), and logs that do not go to a
//! terminal carry no colour codes.

mod common;

use std::process::{Command, Stdio};

use common::daemon::{Emu, Launch, Meterd};

#[test]
fn an_empty_product_code_is_refused_unless_license_only_is_declared() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let launch = || Launch::new(dir.path(), &emu).env("METERD_AWS__PRODUCT_CODE", "");
    let (code, _, stderr) = Meterd::cli(&launch(), &["check-config"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("aws.product_code is not set"), "{stderr}");
    assert!(stderr.contains("aws.license_only = true"), "{stderr}");
    assert!(stderr.contains("meterd run --sandbox"), "{stderr}");
    let (status, stderr) = Meterd::run_to_end(launch());
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("meterd run --sandbox"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "refused before opening anything");

    let declared = || launch().env("METERD_AWS__LICENSE_ONLY", "true");
    let (code, stdout, stderr) = Meterd::cli(&declared(), &["check-config"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("configuration OK"), "{stdout}");
    let (code, _, stderr) =
        Meterd::cli(&declared().env("METERD_AWS__PRODUCT_CODE", "prod-x"), &["check-config"]);
    assert_eq!(code, 64);
    assert!(stderr.contains("aws.license_only = true needs an empty aws.product_code"), "{stderr}");
    // The sandbox has its own product code.
    let sandbox =
        Command::new(env!("CARGO_BIN_EXE_meterd")).args(["check-config", "--sandbox"]).env_clear().output();
    let sandbox = sandbox.unwrap();
    assert!(sandbox.status.success(), "{}", String::from_utf8_lossy(&sandbox.stderr));
}

#[test]
fn the_shipped_configuration_is_refused_until_it_names_a_product() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/meterd.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_meterd"))
        .args(["check-config", "--config", file.to_str().unwrap()])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("aws.product_code is not set"));
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    // Text logs to a pipe; the start fails on a taken metrics port after the first lines.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let launch = Launch::new(dir.path(), &emu)
        .env("METERD_LOG__FORMAT", "text")
        .env("METERD_METRICS__LISTEN", &taken.local_addr().unwrap().to_string());
    let (status, stderr) = Meterd::run_to_end(launch);
    assert!(!status.success());
    assert!(stderr.contains("meterd starting"), "{stderr}");
    assert!(stderr.contains("INFO"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
}

#[test]
fn send_says_what_it_waits_for_at_a_terminal_and_nothing_in_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let send = format!("{} send --socket {}", env!("CARGO_BIN_EXE_meterd"), socket.display());
    // `script` gives the command a terminal; its output is what the terminal showed.
    let Ok(output) = Command::new("script").args(["-qec", &send, "/dev/null"]).stdin(Stdio::null()).output()
    else {
        eprintln!("no `script` (util-linux): skipped");
        return;
    };
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(shown.contains("reading events from the terminal"), "{shown}");
    assert!(shown.contains("--customer-aws-account-id"), "{shown}");

    let output = Command::new(env!("CARGO_BIN_EXE_meterd"))
        .args(["send", "--socket", socket.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("reading events"), "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
    // No socket there: the error says how to start the sandbox.
    assert!(stderr.contains("is meterd running?") && stderr.contains("meterd run --sandbox"), "{stderr}");
}

#[test]
fn the_test_setup_names_what_is_missing_when_it_cannot_install_it() {
    // A copy of scripts/setup.sh in a tree whose venv is ready, run with a PATH that has the
    // shell's basics and none of the tools (nor apt-get): it must name the packages and fail.
    let dir = tempfile::tempdir().unwrap();
    let (scripts, venv, bin) =
        (dir.path().join("scripts"), dir.path().join(".venv/bin"), dir.path().join("bin"));
    for made in [&scripts, &venv, &bin] {
        std::fs::create_dir_all(made).unwrap();
    }
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/setup.sh"), scripts.join("setup.sh"))
        .unwrap();
    std::fs::write(venv.join("python"), "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(venv.join("python"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap();
    for tool in ["dirname", "ls", "id"] {
        let found =
            ["/usr/bin", "/bin"].iter().map(|d| std::path::Path::new(d).join(tool)).find(|p| p.exists());
        std::os::unix::fs::symlink(found.expect(tool), bin.join(tool)).unwrap();
    }
    let output = Command::new("/bin/bash")
        .arg(scripts.join("setup.sh"))
        .arg("ci")
        .env_clear()
        .env("PATH", &bin)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for package in ["systemd", "golang-go", "nodejs", "strace", "rpm", "man-db", "binutils"] {
        assert!(stderr.split([' ', ')', ':']).any(|word| word == package), "{package} not named: {stderr}");
    }
    assert!(stderr.contains("apt-get install"), "{stderr}");
}
