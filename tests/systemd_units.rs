//! The units in systemd/: `systemd-analyze verify` accepts them (with ExecStart pointing at the
//! binary just built, since verify checks that it exists), and they agree with what the binary
//! and its configuration expect.

use std::path::Path;
use std::process::Command;

fn unit(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd").join(name)).unwrap()
}

/// Every value of `key=` in a unit, in order.
fn values<'u>(unit: &'u str, key: &str) -> Vec<&'u str> {
    unit.lines().filter_map(|line| line.strip_prefix(key)?.strip_prefix('=')).collect()
}

#[test]
fn systemd_analyze_verify_accepts_the_units() {
    let dir = tempfile::tempdir().unwrap();
    let service = unit("meterd.service").replace("/usr/local/bin/meterd", env!("CARGO_BIN_EXE_meterd"));
    std::fs::write(dir.path().join("meterd.service"), service).unwrap();
    std::fs::write(dir.path().join("meterd.socket"), unit("meterd.socket")).unwrap();
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("meterd.socket"))
        .arg(dir.path().join("meterd.service"))
        .output()
        .expect("systemd-analyze runs (Debian package systemd; .ci/run installs it)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stderr.trim(), "", "verify printed warnings");
}

#[test]
fn the_units_match_the_binary_and_its_settings() {
    let service = unit("meterd.service");
    let socket = unit("meterd.socket");
    assert_eq!(values(&service, "Type"), ["notify"]);
    assert_eq!(values(&service, "ExecStart"), ["/usr/local/bin/meterd run --config /etc/meterd/meterd.toml"]);
    assert_eq!(
        values(&service, "ExecStartPre"),
        ["/usr/local/bin/meterd check-config --config /etc/meterd/meterd.toml"]
    );
    assert_eq!(values(&service, "ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    // The socket systemd binds is the one meterd is told about, in the directory it keeps.
    let listen = values(&socket, "ListenStream");
    assert_eq!(listen.len(), 1, "meterd serves exactly one passed socket");
    let environment = values(&service, "Environment");
    assert!(
        environment.contains(&format!("METERD_INGEST__SOCKET={}", listen[0]).as_str()),
        "{environment:?}"
    );
    assert!(environment.contains(&"METERD_ADMIN__SOCKET=/run/meterd/admin.sock"));
    assert!(environment.contains(&"METERD_STORAGE__DATA_DIR=/var/lib/meterd"));
    assert_eq!(values(&service, "RuntimeDirectory"), ["meterd"]);
    assert_eq!(values(&service, "StateDirectory"), ["meterd"]);
    assert!(listen[0].starts_with("/run/meterd/"));
    assert_eq!(values(&service, "RuntimeDirectoryPreserve"), ["yes"]);
    // Every Environment key is a real setting: check-config accepts them.
    let mut check = Command::new(env!("CARGO_BIN_EXE_meterd"));
    // The product code comes from /etc/meterd/meterd.toml, which the operator fills in.
    check.arg("check-config").env_clear().env("METERD_AWS__PRODUCT_CODE", "prod-example");
    for assignment in &environment {
        let (key, value) = assignment.split_once('=').unwrap();
        check.env(key, value);
    }
    let output = check.output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // A sandbox of the same hardening: no capabilities, only the socket families meterd uses.
    assert_eq!(values(&service, "CapabilityBoundingSet"), [""]);
    assert_eq!(values(&service, "RestrictAddressFamilies"), ["AF_UNIX AF_INET AF_INET6"]);
    assert_eq!(values(&service, "ProtectSystem"), ["strict"]);
    assert_eq!(values(&service, "NoNewPrivileges"), ["yes"]);
}
