//! Real TLS 1.3 handshakes over loopback TCP between configurations made by this crate,
//! with certificates from a real CA directory.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use scold_pki::{
    peer_identity, refusal_reason_io, Ca, CaInit, Identity, PkiError, RefusalReason, RevokeTarget,
    Role, TlsIdentity, TlsPaths, Validity,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const STEP: Duration = Duration::from_secs(10);

fn id(role: Role, name: &str) -> Identity {
    Identity::new(role, name).unwrap()
}

fn new_ca(dir: &Path) -> Ca {
    Ca::init(dir, &CaInit::default()).unwrap()
}

fn issue(ca: &mut Ca, who: &Identity, validity: Validity, out: &Path) -> TlsPaths {
    ca.issue(who, &[IpAddr::V4(Ipv4Addr::LOCALHOST)], &[], validity, out)
        .unwrap()
        .tls_paths()
}

fn load(p: &TlsPaths) -> TlsIdentity {
    TlsIdentity::load(p).unwrap()
}

/// Outcome of one connection as each side saw it: the peer's identity, or the reason the
/// handshake (or the first read after it) failed.
#[derive(Debug)]
struct Outcome {
    server_saw: Result<Identity, RefusalReason>,
    client_saw: Result<Identity, RefusalReason>,
}

/// One connection over loopback. The server answers "ok" after its handshake; the client
/// reads it, which is where a TLS 1.3 client learns that the server refused its
/// certificate (the client's handshake completes before the server checks it).
async fn connect(server: &TlsIdentity, client: &TlsIdentity, expected: &[Role]) -> Outcome {
    let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config().unwrap());
    let connector = tokio_rustls::TlsConnector::from(client.client_config(expected).unwrap());
    connect_with(acceptor, connector).await
}

async fn connect_with(
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = tokio::time::timeout(STEP, listener.accept())
            .await
            .expect("accept timed out")
            .unwrap();
        match tokio::time::timeout(STEP, acceptor.accept(tcp))
            .await
            .expect("server handshake timed out")
        {
            Ok(mut tls) => {
                let who = peer_identity(tls.get_ref().1).map_err(|_| RefusalReason::BadIdentity);
                let _ = tls.write_all(b"ok").await;
                let _ = tls.shutdown().await;
                who
            }
            Err(e) => Err(refusal_reason_io(&e)),
        }
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let client_saw = match tokio::time::timeout(STEP, connector.connect(name, tcp))
        .await
        .expect("client handshake timed out")
    {
        Ok(mut tls) => {
            let mut buf = [0u8; 2];
            match tokio::time::timeout(STEP, tls.read_exact(&mut buf))
                .await
                .expect("read timed out")
            {
                Ok(_) => {
                    assert_eq!(&buf, b"ok");
                    peer_identity(tls.get_ref().1).map_err(|_| RefusalReason::BadIdentity)
                }
                Err(e) => Err(refusal_reason_io(&e)),
            }
        }
        Err(e) => Err(refusal_reason_io(&e)),
    };
    let server_saw = server.await.unwrap();
    Outcome {
        server_saw,
        client_saw,
    }
}

#[tokio::test]
async fn good_pair_connects_both_ways_and_sees_identities() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = new_ca(&dir.path().join("ca"));
    let out = dir.path().join("certs");
    let coord = id(Role::Coordinator, "c1");
    let proxy = id(Role::Proxy, "p1");
    let c = load(&issue(&mut ca, &coord, Validity::days(1), &out));
    let p = load(&issue(&mut ca, &proxy, Validity::days(1), &out));
    assert_eq!(c.identity(), &coord);
    assert_eq!(p.identity(), &proxy);

    let o = connect(&c, &p, &[Role::Coordinator]).await;
    assert_eq!(o.server_saw, Ok(proxy.clone()));
    assert_eq!(o.client_saw, Ok(coord.clone()));

    let o = connect(&p, &c, &[Role::Proxy, Role::Gateway]).await;
    assert_eq!(o.server_saw, Ok(coord));
    assert_eq!(o.client_saw, Ok(proxy));
}

#[tokio::test]
async fn certificate_of_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut ours = new_ca(&dir.path().join("ours"));
    // Same organisation name, hence the same subject: only the key differs.
    let mut theirs = new_ca(&dir.path().join("theirs"));
    let server = load(&issue(
        &mut ours,
        &id(Role::Coordinator, "c1"),
        Validity::days(1),
        &dir.path().join("a"),
    ));
    let intruder = load(&issue(
        &mut theirs,
        &id(Role::Proxy, "p1"),
        Validity::days(1),
        &dir.path().join("b"),
    ));

    let o = connect(&server, &intruder, &[Role::Coordinator]).await;
    assert_eq!(o.client_saw, Err(RefusalReason::UnknownCa), "{o:?}");

    let o = connect(&intruder, &server, &[Role::Proxy]).await;
    assert_eq!(o.client_saw, Err(RefusalReason::UnknownCa), "{o:?}");
    assert_eq!(o.server_saw, Err(RefusalReason::UnknownCa), "{o:?}");
}

#[tokio::test]
async fn expired_and_future_certificates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = new_ca(&dir.path().join("ca"));
    let out = dir.path().join("certs");
    let now = time::OffsetDateTime::now_utc();
    let server = load(&issue(
        &mut ca,
        &id(Role::Coordinator, "c1"),
        Validity::days(1),
        &out,
    ));
    let past = Validity::between(
        now - time::Duration::days(10),
        now - time::Duration::days(1),
    )
    .unwrap();
    let expired = load(&issue(&mut ca, &id(Role::Proxy, "old"), past, &out));
    let future = Validity::between(
        now + time::Duration::days(1),
        now + time::Duration::days(10),
    )
    .unwrap();
    let early = load(&issue(&mut ca, &id(Role::Proxy, "early"), future, &out));

    let o = connect(&server, &expired, &[Role::Coordinator]).await;
    assert_eq!(o.server_saw, Err(RefusalReason::Expired), "{o:?}");
    assert_eq!(o.client_saw, Err(RefusalReason::Expired), "{o:?}");

    let o = connect(&expired, &server, &[Role::Proxy]).await;
    assert_eq!(o.client_saw, Err(RefusalReason::Expired), "{o:?}");

    let o = connect(&server, &early, &[Role::Coordinator]).await;
    assert_eq!(o.server_saw, Err(RefusalReason::NotYetValid), "{o:?}");
}

#[tokio::test]
async fn revocation_takes_effect_without_rebuilding_configs() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let mut ca = new_ca(&ca_dir);
    let out = dir.path().join("certs");
    let server = load(&issue(
        &mut ca,
        &id(Role::Coordinator, "c1"),
        Validity::days(1),
        &out,
    ));
    let client = load(&issue(
        &mut ca,
        &id(Role::Proxy, "p1"),
        Validity::days(1),
        &out,
    ));
    let bystander = load(&issue(
        &mut ca,
        &id(Role::Proxy, "p2"),
        Validity::days(1),
        &out,
    ));

    // Configurations built once, before the revocation, and reused after it.
    let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config().unwrap());
    let connector =
        tokio_rustls::TlsConnector::from(client.client_config(&[Role::Coordinator]).unwrap());
    let bystander_connector =
        tokio_rustls::TlsConnector::from(bystander.client_config(&[Role::Coordinator]).unwrap());
    let o = connect_with(acceptor.clone(), connector.clone()).await;
    assert_eq!(o.server_saw, Ok(id(Role::Proxy, "p1")), "{o:?}");

    // The CA revokes from its own handle, as `scold ca revoke` in another process would.
    let mut ca = Ca::open(&ca_dir).unwrap();
    let revoked = ca
        .revoke(&RevokeTarget::Identity(id(Role::Proxy, "p1")))
        .unwrap();
    assert_eq!(revoked.len(), 1);
    // Past the check interval, so the next handshake looks at the file.
    tokio::time::sleep(scold_pki::DEFAULT_CRL_CHECK_INTERVAL + Duration::from_millis(200)).await;

    let o = connect_with(acceptor.clone(), connector.clone()).await;
    assert_eq!(o.server_saw, Err(RefusalReason::Revoked), "{o:?}");
    assert_eq!(o.client_saw, Err(RefusalReason::Revoked), "{o:?}");
    let o = connect_with(acceptor.clone(), bystander_connector.clone()).await;
    assert_eq!(o.server_saw, Ok(id(Role::Proxy, "p2")), "{o:?}");

    // A broken CRL written later is rejected and the previous list stays in force.
    std::fs::write(
        ca.crl_path(),
        b"-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n",
    )
    .unwrap();
    server.set_crl_check_interval(Duration::ZERO);
    let o = connect_with(acceptor.clone(), connector).await;
    assert_eq!(o.server_saw, Err(RefusalReason::Revoked), "{o:?}");
    let o = connect_with(acceptor, bystander_connector).await;
    assert_eq!(o.server_saw, Ok(id(Role::Proxy, "p2")), "{o:?}");
}

#[tokio::test]
async fn revoked_server_is_refused_by_client() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = new_ca(&dir.path().join("ca"));
    let out = dir.path().join("certs");
    let server = load(&issue(
        &mut ca,
        &id(Role::Coordinator, "c1"),
        Validity::days(1),
        &out,
    ));
    let client = load(&issue(
        &mut ca,
        &id(Role::Proxy, "p1"),
        Validity::days(1),
        &out,
    ));
    client.set_crl_check_interval(Duration::ZERO);
    let connector =
        tokio_rustls::TlsConnector::from(client.client_config(&[Role::Coordinator]).unwrap());
    let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config().unwrap());
    ca.revoke(&RevokeTarget::Identity(id(Role::Coordinator, "c1")))
        .unwrap();
    let o = connect_with(acceptor, connector).await;
    assert_eq!(o.client_saw, Err(RefusalReason::Revoked), "{o:?}");
    assert_eq!(o.server_saw, Err(RefusalReason::Revoked), "{o:?}");
}

#[tokio::test]
async fn client_refuses_server_of_unexpected_role() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = new_ca(&dir.path().join("ca"));
    let out = dir.path().join("certs");
    let proxy = load(&issue(
        &mut ca,
        &id(Role::Proxy, "p1"),
        Validity::days(1),
        &out,
    ));
    let target = load(&issue(
        &mut ca,
        &id(Role::Target, "t1"),
        Validity::days(1),
        &out,
    ));
    let o = connect(&proxy, &target, &[Role::Coordinator]).await;
    assert_eq!(o.client_saw, Err(RefusalReason::WrongRole), "{o:?}");
    assert!(o.server_saw.is_err(), "{o:?}");
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = new_ca(&dir.path().join("ca"));
    let server = load(&issue(
        &mut ca,
        &id(Role::Coordinator, "c1"),
        Validity::days(1),
        &dir.path().join("c"),
    ));
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca.cert_path()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let anon = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let o = connect_with(
        tokio_rustls::TlsAcceptor::from(server.server_config().unwrap()),
        tokio_rustls::TlsConnector::from(Arc::new(anon)),
    )
    .await;
    assert_eq!(o.server_saw, Err(RefusalReason::NoCertificate), "{o:?}");
}

use rustls::pki_types::pem::PemObject;

#[test]
fn load_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = new_ca(&dir.path().join("ca"));
    let mut other = new_ca(&dir.path().join("other"));
    let good = issue(
        &mut ca,
        &id(Role::Proxy, "p1"),
        Validity::days(1),
        &dir.path().join("a"),
    );
    let foreign = issue(
        &mut other,
        &id(Role::Proxy, "p2"),
        Validity::days(1),
        &dir.path().join("b"),
    );
    assert!(TlsIdentity::load(&good).is_ok());

    // Certificate of another CA against our CA file.
    let p = TlsPaths {
        cert: foreign.cert.clone(),
        key: foreign.key.clone(),
        ..good.clone()
    };
    let e = TlsIdentity::load(&p).unwrap_err();
    assert!(matches!(e, PkiError::NotIssuedByCa { .. }), "{e}");
    // Key of another certificate.
    let p = TlsPaths {
        key: foreign.key.clone(),
        ..good.clone()
    };
    let e = TlsIdentity::load(&p).unwrap_err();
    assert!(matches!(e, PkiError::KeyMismatch { .. }), "{e}");
    assert!(e.to_string().contains("p2.key"), "{e}");
    // A leaf where the CA should be.
    let p = TlsPaths {
        ca_cert: good.cert.clone(),
        ..good.clone()
    };
    assert!(matches!(
        TlsIdentity::load(&p),
        Err(PkiError::NotACa { .. })
    ));
    // CRL named but missing, garbage, or signed by another CA.
    let p = TlsPaths {
        crl: Some(dir.path().join("nope.pem")),
        ..good.clone()
    };
    let e = TlsIdentity::load(&p).unwrap_err();
    assert!(
        matches!(e, PkiError::Read { .. }) && e.to_string().contains("nope.pem"),
        "{e}"
    );
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, [0x30, 0x82, 0xff, 0xff, 1, 2, 3]).unwrap();
    let p = TlsPaths {
        crl: Some(garbage.clone()),
        ..good.clone()
    };
    assert!(matches!(
        TlsIdentity::load(&p),
        Err(PkiError::BadCrl { .. })
    ));
    std::fs::write(&garbage, b"not a crl at all").unwrap();
    assert!(matches!(
        TlsIdentity::load(&p),
        Err(PkiError::BadPem { .. })
    ));
    let p = TlsPaths {
        crl: Some(other.crl_path()),
        ..good.clone()
    };
    let e = TlsIdentity::load(&p).unwrap_err();
    assert!(matches!(e, PkiError::BadCrl { .. }), "{e}");
    // No CRL configured at all: allowed, no revocation checking.
    let p = TlsPaths {
        crl: None,
        ..good.clone()
    };
    assert!(TlsIdentity::load(&p).is_ok());
    // Garbage certificate and key files.
    std::fs::write(
        &garbage,
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let p = TlsPaths {
        cert: garbage.clone(),
        ..good.clone()
    };
    assert!(matches!(
        TlsIdentity::load(&p),
        Err(PkiError::BadCertificate { .. })
    ));
    let p = TlsPaths {
        key: garbage.clone(),
        ..good.clone()
    };
    assert!(matches!(
        TlsIdentity::load(&p),
        Err(PkiError::BadPem { .. })
    ));
}

#[test]
fn certificate_without_identity_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(&dir.path().join("ca"));
    let key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.path().join("ca/ca.key")).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca.cert_pem(), &key).unwrap();
    let uri_sets: [&[&str]; 6] = [
        &["https://x/y"],
        &[],
        &["scold://king/x"],
        &["scold://proxy/P1"],
        &["scold://proxy/a/b"],
        // Two identities in one certificate: ambiguous, refused.
        &["scold://proxy/p1", "scold://coordinator/c1"],
    ];
    for uris in uri_sets {
        let mut params = rcgen::CertificateParams::new(vec!["node.example".to_string()]).unwrap();
        for u in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI((*u).try_into().unwrap()));
        }
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&leaf_key, &issuer).unwrap();
        let c = dir.path().join("anon.crt");
        let k = dir.path().join("anon.key");
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, leaf_key.serialize_pem()).unwrap();
        let p = TlsPaths {
            ca_cert: ca.cert_path(),
            cert: c,
            key: k,
            crl: None,
        };
        assert!(matches!(
            TlsIdentity::load(&p),
            Err(PkiError::NoIdentity { .. })
        ));
    }
}

#[test]
fn private_keys_are_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut ca = new_ca(&dir.path().join("ca"));
    let issued = ca
        .issue(
            &id(Role::Gateway, "g1"),
            &[],
            &["gw.example".into()],
            Validity::days(1),
            &dir.path().join("out"),
        )
        .unwrap();
    for key in [dir.path().join("ca/ca.key"), issued.key.clone()] {
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
    // Re-issuing over an existing, looser key file still leaves 0600.
    std::fs::set_permissions(&issued.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let again = ca
        .issue(
            &id(Role::Gateway, "g1"),
            &[],
            &[],
            Validity::days(1),
            &dir.path().join("out"),
        )
        .unwrap();
    let mode = std::fs::metadata(&again.key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// A CA that copies our CA's subject name but has its own key: the chain's signature
/// fails, and that is reported as an unknown CA.
#[tokio::test]
async fn look_alike_ca_is_refused_as_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let mut ours = new_ca(&dir.path().join("ours"));
    let server = load(&issue(
        &mut ours,
        &id(Role::Coordinator, "c1"),
        Validity::days(1),
        &dir.path().join("a"),
    ));

    let fake_key = rcgen::KeyPair::generate().unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(ours.cert_pem(), &fake_key).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "scold://proxy/evil".try_into().unwrap(),
    )];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&leaf_key, &issuer).unwrap();
    let b = dir.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join("evil.crt"), cert.pem()).unwrap();
    std::fs::write(b.join("evil.key"), leaf_key.serialize_pem()).unwrap();
    // The forger also forges its CA file: the same subject, its own key.
    let mut ca_params = rcgen::CertificateParams::new(vec![]).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ours_der = rustls::pki_types::CertificateDer::from_pem_file(ours.cert_path()).unwrap();
    let (_, ours_x509) = x509_parser::parse_x509_certificate(&ours_der).unwrap();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    for attr in ours_x509.subject().iter_attributes() {
        let ty = rcgen::DnType::from_oid(&attr.attr_type().iter().unwrap().collect::<Vec<_>>());
        ca_params
            .distinguished_name
            .push(ty, attr.as_str().unwrap());
    }
    std::fs::write(
        b.join("ca.crt"),
        ca_params.self_signed(&fake_key).unwrap().pem(),
    )
    .unwrap();
    let evil = load(&TlsPaths {
        ca_cert: b.join("ca.crt"),
        cert: b.join("evil.crt"),
        key: b.join("evil.key"),
        crl: None,
    });
    assert_eq!(evil.identity(), &id(Role::Proxy, "evil"));

    // Our client refuses the forged server.
    let o = connect(&evil, &server, &[Role::Proxy]).await;
    assert_eq!(o.client_saw, Err(RefusalReason::UnknownCa), "{o:?}");
    // The forged client, trusting its forged CA, refuses our server first (alert
    // decrypt_error, which says too little to name a reason); our server never admits it.
    let o = connect(&server, &evil, &[Role::Coordinator]).await;
    assert!(o.server_saw.is_err(), "{o:?}");

    // A clone shares the trust state and makes working configurations.
    let again = server.clone();
    assert_eq!(again.identity(), server.identity());
    assert!(again.server_config().is_ok());
}

/// Truncations and byte flips of real certificate, key and CRL files give errors, never a
/// panic.
#[test]
fn damaged_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = new_ca(&dir.path().join("ca"));
    let out = dir.path().join("certs");
    let good = issue(&mut ca, &id(Role::Proxy, "p1"), Validity::days(1), &out);
    ca.revoke(&RevokeTarget::Identity(id(Role::Proxy, "p1")))
        .unwrap();
    let bad = dir.path().join("bad.pem");
    let mut refused = 0;
    for (which, src) in [
        ("cert", good.cert.clone()),
        ("key", good.key.clone()),
        ("crl", ca.crl_path()),
        ("ca", good.ca_cert.clone()),
    ] {
        let bytes = std::fs::read(&src).unwrap();
        let mut variants: Vec<Vec<u8>> = (0..bytes.len())
            .step_by(5)
            .map(|n| bytes[..n].to_vec())
            .collect();
        for i in (30..bytes.len().saturating_sub(30)).step_by(11) {
            let mut v = bytes.clone();
            // Swap one base64 character for another, keeping the armour intact.
            v[i] = if v[i] == b'A' { b'B' } else { b'A' };
            variants.push(v);
        }
        for v in variants {
            std::fs::write(&bad, &v).unwrap();
            let mut p = good.clone();
            match which {
                "cert" => p.cert = bad.clone(),
                "key" => p.key = bad.clone(),
                "crl" => p.crl = Some(bad.clone()),
                _ => p.ca_cert = bad.clone(),
            }
            match TlsIdentity::load(&p) {
                // Only a flip in bytes nobody checks (a key's unused encoding, padding)
                // can still load, and then it is still the same node.
                Ok(t) => assert_eq!(t.identity(), &id(Role::Proxy, "p1"), "{which}"),
                Err(_) => refused += 1,
            }
        }
    }
    assert!(refused > 100, "only {refused} damaged files refused");
}
