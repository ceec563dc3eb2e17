//! The fleet database over TLS as RDS wants it: `sslmode=verify-full` with `fleet.ca_file`
//! reaches a server whose certificate that CA signed, and the session is encrypted; a wrong CA is
//! refused; `require` encrypts without checking, as libpq does.

mod common;

use std::path::Path;

use common::pg::Pg;
use meterd::fleet::db::Target;

fn encrypted(pg: &Pg, query: &str, ca: &Path) -> Result<bool, String> {
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres?{query}", pg.port);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let target = Target::new(&url, Path::new(""), ca, "tls").map_err(|e| e.to_string())?;
        target.migrate().await.map_err(|e| e.to_string())?;
        let client = target.connect().await.map_err(|e| e.to_string())?;
        let row = client
            .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .await
            .map_err(|e| e.to_string())?;
        Ok(row.get::<_, bool>(0))
    })
}

#[test]
fn verify_full_with_the_servers_ca_connects_encrypted_and_a_wrong_ca_is_refused() {
    let (pg, ca) = Pg::start_tls();
    assert_eq!(encrypted(&pg, "sslmode=verify-full", &ca), Ok(true));
    assert_eq!(encrypted(&pg, "sslmode=verify-ca", &ca), Ok(true));
    assert_eq!(encrypted(&pg, "sslmode=require", Path::new("")), Ok(true));
    assert_eq!(encrypted(&pg, "sslmode=disable", Path::new("")), Ok(false));
    // A CA that did not sign the server's certificate.
    let (_other, other_ca) = Pg::start_tls();
    let refused = encrypted(&pg, "sslmode=verify-full", &other_ca).unwrap_err();
    assert_eq!(refused, "PostgreSQL: error performing TLS handshake");
}
