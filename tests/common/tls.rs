//! TLS for tests: certificates made with `openssl` at test time, and
//! clients that trust exactly those certificates (rustls, real verification).

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::protocol::WebSocket;

use super::WAIT;

/// A TLS stream to the server.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A self-signed certificate for `localhost` and 127.0.0.1, and its key.
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

/// A fresh directory for one test's files.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wshub-tls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Generates `NAME.cert.pem` and `NAME.key.pem` in `dir` (P-256, one day).
pub fn make_cert(dir: &Path, name: &str) -> TestCert {
    let cert = dir.join(format!("{name}.cert.pem"));
    let key = dir.join(format!("{name}.key.pem"));
    let output = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", &format!("/CN=localhost/O={name}")])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl must be installed for the TLS tests");
    assert!(
        output.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let der = CertificateDer::from_pem_file(&cert).expect("read generated cert");
    TestCert { cert, key, der }
}

/// A client config trusting only `certs`, offering ALPN http/1.1.
pub fn client_config(certs: &[&TestCert]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert.der.clone()).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Connects and completes the TLS handshake.
pub fn connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> Result<TlsStream, String> {
    let socket = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(WAIT))
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let conn = ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
    let mut stream = StreamOwned::new(conn, socket);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| e.to_string())?;
    }
    Ok(stream)
}

/// The certificate the server presented.
pub fn peer_cert(stream: &TlsStream) -> CertificateDer<'static> {
    stream.conn.peer_certificates().expect("peer certificates")[0].clone()
}

/// A wss:// session on `path`.
pub fn wss(addr: SocketAddr, config: &Arc<ClientConfig>, path: &str) -> WebSocket<TlsStream> {
    let stream = connect(addr, config).expect("TLS handshake");
    let url = format!("wss://localhost:{}{path}", addr.port());
    let (ws, _) = tungstenite::client(url, stream).expect("websocket handshake over TLS");
    ws
}

/// One https:// request (`Connection: close`); status and body.
pub fn https(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = connect(addr, config).expect("TLS handshake");
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).expect("send request");
    super::read_response(&mut BufReader::new(stream))
}
