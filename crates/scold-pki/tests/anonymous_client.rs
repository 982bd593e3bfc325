//! The admission handshake of scheme 4.1: a client agent that holds only the consortium
//! CA certificate verifies a proxy that does not ask for a client certificate.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use rustls::pki_types::ServerName;
use scold_pki::{
    peer_identity, peer_ip_addresses, refusal_reason_io, Ca, CaInit, CaTrust, Identity,
    RefusalReason, RevokeTarget, Role, TlsIdentity, Validity,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const STEP: Duration = Duration::from_secs(10);

fn server(ca: &mut Ca, role: Role, out: &Path) -> TlsIdentity {
    let p = ca
        .issue(
            &Identity::new(role, "p1").unwrap(),
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            &[],
            Validity::days(1),
            out,
        )
        .unwrap()
        .tls_paths();
    TlsIdentity::load(&p).unwrap()
}

/// One connection: the server sends "ok" after its handshake. Returns what the client
/// saw: the server's identity and certificate addresses, or why it refused.
async fn connect(
    server: &TlsIdentity,
    trust: &CaTrust,
    expected: &[Role],
) -> Result<(Identity, Vec<IpAddr>), RefusalReason> {
    let acceptor =
        tokio_rustls::TlsAcceptor::from(server.server_config_without_client_auth().unwrap());
    let connector = tokio_rustls::TlsConnector::from(trust.client_config(expected).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        if let Ok(Ok(mut tls)) = tokio::time::timeout(STEP, acceptor.accept(tcp)).await {
            // The client presented nothing, and the server did not ask.
            assert!(tls.get_ref().1.peer_certificates().is_none());
            let _ = tls.write_all(b"ok").await;
            let _ = tls.shutdown().await;
        }
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let r = match tokio::time::timeout(STEP, connector.connect(name, tcp))
        .await
        .expect("handshake timed out")
    {
        Ok(mut tls) => {
            let mut buf = [0u8; 2];
            tls.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ok");
            let conn = tls.get_ref().1;
            Ok((
                peer_identity(conn).unwrap(),
                peer_ip_addresses(conn).unwrap(),
            ))
        }
        Err(e) => Err(refusal_reason_io(&e)),
    };
    srv.await.unwrap();
    r
}

#[tokio::test]
async fn proxy_verified_with_ca_certificate_only() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ca = Ca::init(&tmp.path().join("ca"), &CaInit::default()).unwrap();
    let proxy = server(&mut ca, Role::Proxy, &tmp.path().join("p"));
    let trust = CaTrust::load(&ca.cert_path(), Some(&ca.crl_path())).unwrap();
    let (who, ips) = connect(&proxy, &trust, &[Role::Proxy]).await.unwrap();
    assert_eq!(who, Identity::new(Role::Proxy, "p1").unwrap());
    assert_eq!(ips, vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
}

#[tokio::test]
async fn foreign_ca_wrong_role_and_revoked_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ca = Ca::init(&tmp.path().join("ca"), &CaInit::default()).unwrap();
    let mut other = Ca::init(&tmp.path().join("other"), &CaInit::default()).unwrap();
    let trust = CaTrust::load(&ca.cert_path(), Some(&ca.crl_path())).unwrap();

    let stranger = server(&mut other, Role::Proxy, &tmp.path().join("s"));
    assert_eq!(
        connect(&stranger, &trust, &[Role::Proxy])
            .await
            .unwrap_err(),
        RefusalReason::UnknownCa
    );
    let gateway = server(&mut ca, Role::Gateway, &tmp.path().join("g"));
    assert_eq!(
        connect(&gateway, &trust, &[Role::Proxy]).await.unwrap_err(),
        RefusalReason::WrongRole
    );
    let proxy = server(&mut ca, Role::Proxy, &tmp.path().join("p"));
    assert!(connect(&proxy, &trust, &[Role::Proxy]).await.is_ok());
    ca.revoke(&RevokeTarget::Identity(
        Identity::new(Role::Proxy, "p1").unwrap(),
    ))
    .unwrap();
    // A fresh load reads the new CRL at once instead of after the check interval.
    let trust = CaTrust::load(&ca.cert_path(), Some(&ca.crl_path())).unwrap();
    assert_eq!(
        connect(&proxy, &trust, &[Role::Proxy]).await.unwrap_err(),
        RefusalReason::Revoked
    );
}

#[test]
fn ca_file_that_is_no_ca_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ca = Ca::init(&tmp.path().join("ca"), &CaInit::default()).unwrap();
    let issued = ca
        .issue(
            &Identity::new(Role::Proxy, "p1").unwrap(),
            &[],
            &[],
            Validity::days(1),
            &tmp.path().join("p"),
        )
        .unwrap();
    let e = CaTrust::load(&issued.cert, None).unwrap_err();
    assert!(e.to_string().contains("not a CA certificate"), "{e}");
    let e = CaTrust::load(&tmp.path().join("missing.crt"), None).unwrap_err();
    assert!(e.to_string().contains("cannot read"), "{e}");
}
