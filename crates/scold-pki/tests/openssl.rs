//! Interoperability with OpenSSL, an implementation nobody here wrote: it must accept
//! our certificates, read our CRL, and complete a mutual TLS 1.3 handshake with our
//! server configuration.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use scold_pki::{peer_identity, Ca, CaInit, Identity, RevokeTarget, Role, TlsIdentity, Validity};
use scold_testkit::require_tool;
use tokio::io::AsyncWriteExt;

/// The `openssl` command; the test fails, naming the package, without it.
fn openssl() -> PathBuf {
    require_tool("openssl", "openssl")
}

fn verify(ca: &Ca, cert: &Path) -> (bool, String) {
    let out = std::process::Command::new(openssl())
        .args(["verify", "-crl_check", "-CAfile"])
        .arg(ca.cert_path())
        .arg("-CRLfile")
        .arg(ca.crl_path())
        .arg(cert)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn openssl_verifies_certificates_and_reads_the_crl() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = Ca::init(&dir.path().join("ca"), &CaInit::default()).unwrap();
    let out = dir.path().join("out");
    let p1 = Identity::new(Role::Proxy, "p1").unwrap();
    let a = ca.issue(&p1, &[], &[], Validity::days(1), &out).unwrap();
    let b = ca
        .issue(
            &Identity::new(Role::Dns, "ns1").unwrap(),
            &[],
            &[],
            Validity::days(1),
            &out,
        )
        .unwrap();
    let (ok, text) = verify(&ca, &a.cert);
    assert!(ok, "{text}");
    ca.revoke(&RevokeTarget::Serial(a.serial.clone())).unwrap();
    let (ok, text) = verify(&ca, &a.cert);
    assert!(!ok && text.contains("revoked"), "{text}");
    let (ok, text) = verify(&ca, &b.cert);
    assert!(ok, "{text}");

    let text = std::process::Command::new(openssl())
        .args([
            "x509",
            "-noout",
            "-ext",
            "subjectAltName,extendedKeyUsage",
            "-in",
        ])
        .arg(&a.cert)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("URI:scold://proxy/p1"), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication")
            && text.contains("TLS Web Client Authentication"),
        "{text}"
    );
}

#[tokio::test]
async fn openssl_client_completes_mutual_tls_with_our_server() {
    let bin = openssl();
    let dir = tempfile::tempdir().unwrap();
    let mut ca = Ca::init(&dir.path().join("ca"), &CaInit::default()).unwrap();
    let out = dir.path().join("out");
    let server = TlsIdentity::load(
        &ca.issue(
            &Identity::new(Role::Coordinator, "c1").unwrap(),
            &[],
            &[],
            Validity::days(1),
            &out,
        )
        .unwrap()
        .tls_paths(),
    )
    .unwrap();
    let client = ca
        .issue(
            &Identity::new(Role::Operator, "alice").unwrap(),
            &[],
            &[],
            Validity::days(1),
            &out,
        )
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config().unwrap());
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let who = peer_identity(tls.get_ref().1).map_err(|e| e.to_string());
        let _ = tls.write_all(b"hello\n").await;
        let _ = tls.shutdown().await;
        who
    });
    let child = tokio::process::Command::new(bin)
        .args([
            "s_client",
            "-tls1_3",
            "-brief",
            "-verify_return_error",
            "-connect",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-CAfile")
        .arg(&client.ca_cert)
        .arg("-cert")
        .arg(&client.cert)
        .arg("-key")
        .arg(&client.key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let who = tokio::time::timeout(Duration::from_secs(10), accept)
        .await
        .expect("handshake with openssl timed out")
        .unwrap();
    // s_client exits by itself at the end of its (empty) standard input; a hang ends at
    // the timeout and kill_on_drop.
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("openssl did not exit")
        .unwrap();
    let stderr = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        who,
        Ok(Identity::new(Role::Operator, "alice").unwrap()),
        "openssl said: {stderr}"
    );
    assert!(stderr.contains("TLSv1.3"), "{stderr}");
    assert!(stderr.contains("Verification: OK"), "{stderr}");
}
