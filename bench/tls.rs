//! The bench's TLS client side: certificates for a generated herd (`herd certs`, the server's
//! own command), and a rustls client trusting the herd's CA. Every connection is a session of
//! its own (resumption off, so each handshake is a full one), its handshake done on a blocking
//! socket before the caller goes on; the load generator then moves its bytes sans-IO
//! (`read_tls`, `process_new_packets`, `write_tls`) inside its own poll loop.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::herd::HerdConfig;

/// How long a blocking handshake (or the reply read after it) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `herd certs` for `config`'s servers into `dir` (a CA, and a key and certificate per
/// server naming it): `dir` afterwards holds `ca.pem`, `NAME.pem` and `NAME.key`.
pub fn make_certs(bin: &Path, config: &HerdConfig, dir: &Path) -> Result<(), String> {
    let conf = dir.with_extension("conf");
    std::fs::write(&conf, config.text(0, dir.parent().unwrap_or(dir)))
        .map_err(|e| format!("{}: {e}", conf.display()))?;
    let output = Command::new(bin)
        .arg("certs")
        .arg(&conf)
        .arg(dir)
        .output()
        .map_err(|e| format!("herd certs: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "herd certs failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}

/// A server's certificate and key as `herd certs` wrote them into `dir`.
pub fn cert_and_key(dir: &Path, server: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{server}.pem")),
        dir.join(format!("{server}.key")),
    )
}

/// A TLS client of one server: the herd's CA as its only root, the server's name to check.
pub struct TlsClient {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl TlsClient {
    /// Trusts `ca_pem` only and expects a certificate for `server`.
    pub fn new(ca_pem: &Path, server: &str) -> Result<TlsClient, String> {
        let ca = CertificateDer::from_pem_file(ca_pem)
            .map_err(|e| format!("{}: {e}", ca_pem.display()))?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca)
            .map_err(|e| format!("{}: {e}", ca_pem.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("rustls: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = Resumption::disabled();
        let name = ServerName::try_from(server.to_string())
            .map_err(|e| format!("server name {server}: {e}"))?;
        Ok(TlsClient {
            config: Arc::new(config),
            name,
        })
    }

    /// A full handshake over `stream` (blocking, bounded by `HANDSHAKE_TIMEOUT`); the stream
    /// is left blocking, without a read timeout.
    pub fn handshake(&self, stream: &mut TcpStream) -> Result<ClientConnection, String> {
        let mut tls = ClientConnection::new(self.config.clone(), self.name.clone())
            .map_err(|e| format!("rustls: {e}"))?;
        stream
            .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .map_err(|e| format!("socket options: {e}"))?;
        while tls.is_handshaking() {
            tls.complete_io(stream)
                .map_err(|e| format!("TLS handshake: {e}"))?;
        }
        // The client's Finished may still be buffered.
        while tls.wants_write() {
            tls.write_tls(stream)
                .map_err(|e| format!("TLS handshake: {e}"))?;
        }
        stream
            .set_read_timeout(None)
            .map_err(|e| format!("socket options: {e}"))?;
        Ok(tls)
    }

    /// Connects to `addr` and completes a handshake: a blocking TLS stream.
    pub fn connect(
        &self,
        addr: SocketAddr,
    ) -> Result<StreamOwned<ClientConnection, TcpStream>, String> {
        let mut stream = TcpStream::connect_timeout(&addr, HANDSHAKE_TIMEOUT)
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("socket options: {e}"))?;
        let tls = self.handshake(&mut stream)?;
        Ok(StreamOwned::new(tls, stream))
    }
}

/// Sends `PING` on a blocking stream (TLS or not) and reads one line back: the server's `? `
/// answer, so the connection is known to be served (not only accepted).
pub fn round_trip(stream: &mut (impl io::Read + Write)) -> Result<(), String> {
    stream
        .write_all(b"PING\n")
        .and_then(|()| stream.flush())
        .map_err(|e| format!("write: {e}"))?;
    let mut line = Vec::new();
    BufReader::with_capacity(64, stream)
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("read: {e}"))?;
    if line.first() == Some(&b'?') {
        Ok(())
    } else {
        Err(format!(
            "unexpected answer to PING: {:?}",
            String::from_utf8_lossy(&line)
        ))
    }
}
