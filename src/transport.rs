//! The byte stream under a session: plain TCP, or TLS over TCP
//! (docs/protocol.md section 8). A new transport goes here, as a variant of
//! [`Transport`] that reads and writes plaintext like the others.
//!
//! Both variants read and write like a non-blocking socket: `WouldBlock`
//! means "wait for readiness". TLS keeps two promises the plain socket
//! keeps by itself, so the loop's rules still hold:
//!
//! - a read returns `WouldBlock` only once the socket itself did, so with
//!   edge-triggered readiness no record is left unread ([`Transport::reads_to_block`]
//!   tells the loop that a short read proves nothing);
//! - a write takes plaintext only while no ciphertext is waiting for the
//!   socket, so what rustls buffers is bounded by one write; what is left
//!   is pushed by [`Transport::push_pending`] and reported by
//!   [`Transport::has_pending`], so the loop keeps write interest for it.
//!
//! Generic over the [`Socket`] below it: a `mio` TCP stream in the server,
//! an in-memory stream in the session's unit tests (plain and TLS alike).
//! Touches only its own socket.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;
use rustls::ServerConnection;

/// What a transport runs over: a non-blocking byte stream whose sending
/// side can be ended on its own.
pub(crate) trait Socket: Read + Write {
    /// Sends FIN: the peer reads the end, we can still read.
    fn shutdown_write(&mut self) -> io::Result<()>;

    /// Reads without consuming (`MSG_PEEK`): a PROXY header is looked at
    /// until it is whole, and only its own bytes are taken, so what follows
    /// stays for the transport (TLS included).
    fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize>;
}

impl Socket for TcpStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }

    fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        TcpStream::peek(self, buf)
    }
}

/// A session's stream.
#[derive(Debug)]
pub(crate) enum Transport<S = TcpStream> {
    /// Plain TCP.
    Plain(S),
    /// TLS over TCP (boxed: a rustls connection is large, plain sessions
    /// should not pay for it).
    Tls(Box<Tls<S>>),
}

impl<S: Socket> Transport<S> {
    /// Plain, or the server side of a TLS handshake when `tls` is given.
    pub(crate) fn new(socket: S, tls: Option<ServerConnection>) -> Transport<S> {
        match tls {
            None => Transport::Plain(socket),
            Some(conn) => Transport::Tls(Box::new(Tls::new(socket, conn))),
        }
    }

    /// The socket, for registering with the poll.
    pub(crate) fn socket_mut(&mut self) -> &mut S {
        match self {
            Transport::Plain(socket) => socket,
            Transport::Tls(tls) => &mut tls.io,
        }
    }

    /// A short read does not prove the socket is drained: rustls may have
    /// taken only part of what is waiting. Read until `WouldBlock`.
    pub(crate) fn reads_to_block(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// A TLS handshake is still in progress (its next read may cost a
    /// signature).
    pub(crate) fn is_handshaking(&self) -> bool {
        matches!(self, Transport::Tls(tls) if tls.conn.is_handshaking())
    }

    /// Output is waiting below the plaintext (TLS records, handshake).
    pub(crate) fn has_pending(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(tls) => tls.conn.wants_write(),
        }
    }

    /// Writes what is waiting below the plaintext; `Ok(true)`: some is
    /// still waiting for the socket.
    pub(crate) fn push_pending(&mut self) -> io::Result<bool> {
        match self {
            Transport::Plain(_) => Ok(false),
            Transport::Tls(tls) => tls.push_pending(),
        }
    }

    /// Ends our sending side: TLS says `close_notify` first.
    pub(crate) fn shutdown_write(&mut self) -> io::Result<()> {
        if let Transport::Tls(tls) = self {
            tls.conn.send_close_notify();
            // A few bytes into a socket that just drained: if they do not
            // fit, the FIN below still ends the stream.
            let _ = tls.push_pending();
        }
        self.socket_mut().shutdown_write()
    }
}

impl<S: Socket> Read for Transport<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(socket) => socket.read(buf),
            Transport::Tls(tls) => tls.read(buf),
        }
    }
}

impl<S: Socket> Write for Transport<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(socket) => socket.write(buf),
            Transport::Tls(tls) => tls.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Plain(socket) => socket.write_vectored(bufs),
            Transport::Tls(tls) => tls.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A rustls server connection over a non-blocking stream `S` (a TCP socket,
/// or an in-memory stream in tests).
#[derive(Debug)]
pub(crate) struct Tls<S> {
    io: S,
    conn: ServerConnection,
}

impl<S: Read + Write> Tls<S> {
    /// Starts the server side of a handshake over `io`.
    pub(crate) fn new(io: S, conn: ServerConnection) -> Tls<S> {
        Tls { io, conn }
    }

    fn push_pending(&mut self) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.io) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                // `Ok(0)`: the peer's close_notify.
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // TCP FIN without close_notify: an end like any other here,
                // since HTTP and WebSocket frame their own messages.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            match self.conn.read_tls(&mut self.io) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(e) = self.conn.process_new_packets() {
                // Tell a TLS peer why (an alert); a plain-HTTP client gets
                // no HTTP response, only the close.
                let _ = self.push_pending();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Handshake messages: what the socket does not take now waits
            // for `push_pending` at the flush.
            self.push_pending()?;
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.push_pending()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.conn.writer().write_vectored(bufs)?;
        if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
            // rustls's buffer is full (only before the handshake ends).
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.push_pending()?;
        Ok(n)
    }
}

#[cfg(test)]
pub(crate) mod mock {
    //! An in-memory non-blocking stream: reads what the test fed it and
    //! returns `WouldBlock` when empty; takes at most `write_limit` bytes
    //! per write and `WouldBlock` once `capacity` is full. Also a TLS
    //! client and a server config from a test pair, for handshakes over it.

    use std::collections::VecDeque;
    use std::io::{self, Read, Write};
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};

    /// See the module doc.
    #[derive(Debug, Default)]
    pub(crate) struct MockStream {
        pub input: VecDeque<u8>,
        pub eof: bool,
        pub output: Vec<u8>,
        pub write_limit: Option<usize>,
        pub capacity: Option<usize>,
        /// Our FIN was sent.
        pub shut_write: bool,
    }

    impl super::Socket for MockStream {
        fn shutdown_write(&mut self) -> io::Result<()> {
            self.shut_write = true;
            Ok(())
        }

        fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.input.is_empty() {
                return if self.eof {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let n = buf.len().min(self.input.len());
            for (to, from) in buf.iter_mut().zip(self.input.iter()) {
                *to = *from;
            }
            Ok(n)
        }
    }

    impl Read for MockStream {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.input.is_empty() {
                return if self.eof {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let n = self.input.read(buf)?;
            Ok(n)
        }
    }

    impl Write for MockStream {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let room = self
                .capacity
                .map_or(usize::MAX, |c| c.saturating_sub(self.output.len()));
            let n = buf
                .len()
                .min(room)
                .min(self.write_limit.unwrap_or(usize::MAX));
            if n == 0 && !buf.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.output.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Accepts any certificate: the test pair is self-signed.
    #[derive(Debug)]
    struct AcceptAny;

    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    /// A server config from a pair generated with openssl, or `None` when
    /// openssl is not installed (the integration tests require it).
    pub(crate) fn server_config() -> Option<Arc<rustls::ServerConfig>> {
        let dir = std::env::temp_dir().join(format!("wshub-transport-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let status = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        if !status.success() {
            return None;
        }
        let config = crate::config::TlsConfig {
            cert: cert.to_string_lossy().into_owned(),
            key: key.to_string_lossy().into_owned(),
        };
        crate::tls::load(&config).ok().flatten()
    }

    pub(crate) fn client() -> ClientConnection {
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.dangerous()
                        .with_custom_certificate_verifier(Arc::new(AcceptAny))
                        .with_no_client_auth()
                })
                .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use rustls::ClientConnection;

    use super::mock::{client, server_config, MockStream};
    use super::*;

    /// Moves bytes between the client and the server's mock stream until
    /// neither side has anything to say.
    fn pump(
        client: &mut ClientConnection,
        server: &mut Tls<MockStream>,
        into_server: &mut Vec<u8>,
    ) {
        for _ in 0..64 {
            let mut moved = false;
            while client.wants_write() {
                let mut out = Vec::new();
                client.write_tls(&mut out).unwrap();
                server.io.input.extend(out);
                moved = true;
            }
            let mut buf = [0u8; 4096];
            loop {
                match server.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        into_server.extend_from_slice(&buf[..n]);
                        moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("server read: {e}"),
                }
            }
            let _ = server.push_pending();
            if !server.io.output.is_empty() {
                let out = std::mem::take(&mut server.io.output);
                let mut slice = &out[..];
                while !slice.is_empty() {
                    client.read_tls(&mut slice).unwrap();
                }
                client.process_new_packets().unwrap();
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    #[test]
    fn handshake_and_plaintext_both_ways_over_short_writes() {
        let Some(config) = server_config() else {
            eprintln!("openssl not found: skipped");
            return;
        };
        let mut server = Tls::new(
            MockStream {
                write_limit: Some(7),
                ..MockStream::default()
            },
            ServerConnection::new(config).unwrap(),
        );
        let mut client = client();
        let mut received = Vec::new();
        client
            .writer()
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .unwrap();
        pump(&mut client, &mut server, &mut received);
        assert!(!client.is_handshaking());
        assert_eq!(client.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(received, b"GET / HTTP/1.1\r\n\r\n");

        // A slow socket: the first write is taken, the next waits until the
        // ciphertext behind it is gone.
        server.io.capacity = Some(0);
        let first = server.write(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        assert_eq!(first, 19);
        assert!(server.conn.wants_write());
        let blocked = server.write(b"more").map_err(|e| e.kind());
        assert_eq!(blocked, Err(io::ErrorKind::WouldBlock));
        server.io.capacity = None;
        assert!(!server.push_pending().unwrap());
        pump(&mut client, &mut server, &mut received);
        let mut plain = Vec::new();
        let _ = client.reader().read_to_end(&mut plain);
        assert_eq!(plain, b"HTTP/1.1 200 OK\r\n\r\n");
    }

    #[test]
    fn plain_http_is_an_error_not_a_response() {
        let Some(config) = server_config() else {
            eprintln!("openssl not found: skipped");
            return;
        };
        let mut server = Tls::new(
            MockStream::default(),
            ServerConnection::new(config).unwrap(),
        );
        server.io.input.extend(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut buf = [0u8; 64];
        let result = server.read(&mut buf).map_err(|e| e.kind());
        assert_eq!(result, Err(io::ErrorKind::InvalidData));
        assert!(!server.io.output.starts_with(b"HTTP/"));
    }

    #[test]
    fn fin_without_close_notify_reads_as_end() {
        let Some(config) = server_config() else {
            eprintln!("openssl not found: skipped");
            return;
        };
        let mut server = Tls::new(
            MockStream::default(),
            ServerConnection::new(config).unwrap(),
        );
        server.io.eof = true;
        let mut buf = [0u8; 64];
        assert_eq!(server.read(&mut buf).map_err(|e| e.kind()), Ok(0));
    }
}
