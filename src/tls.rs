//! TLS on links (SPEC section 9, `peer tls DIR`): the herd's CA, this server's certificate and
//! key loaded into rustls configs for both ends of a link; TLS for clients (`tls NAME IP:PORT
//! CERT KEY`): the certificate chain and key clients are shown; the TLS state a connection carries
//! ([`TlsStream`], rustls's sans-IO engine: `net.rs` moves its bytes, the loop never waits on
//! it), the check that a neighbour's certificate names the server its hello claims, and the
//! words a failed handshake is logged with. It makes no socket call.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::ring::default_provider;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, ClientConnection, Connection, Error,
    RootCertStore, ServerConfig, ServerConnection,
};

/// The first byte of every TLS handshake record (a ClientHello). A client's line never starts
/// with it, so an accepted connection that does is a neighbour's TLS link.
pub const HANDSHAKE_RECORD: u8 = 0x16;

/// What a server needs for TLS on its links: a config for the links it makes (it checks the
/// neighbour's certificate against the herd's CA and the neighbour's name) and for those it
/// accepts (it asks every neighbour for a certificate from the herd's CA), both presenting
/// this server's certificate.
pub struct PeerTlsConfig {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    /// When each loaded certificate expires, for the metrics page: (`ca` or the server's
    /// name, unix seconds).
    pub expiries: Vec<(String, i64)>,
}

impl fmt::Debug for PeerTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTlsConfig")
            .field("expiries", &self.expiries)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(default_provider())
}

/// Loads `ca.pem`, `NAME.pem` and `NAME.key` from `dir` (what `herd certs` made) for server
/// `name`. The error names the file and what is wrong with it.
pub fn load(dir: &Path, name: &str) -> Result<PeerTlsConfig, String> {
    let ca_path = dir.join("ca.pem");
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    let unreadable = |path: &Path, e: &dyn fmt::Display| {
        format!(
            "peer tls: cannot read {}: {e} (make it with `herd certs CONFIG {}`)",
            path.display(),
            dir.display()
        )
    };
    let authorities: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&ca_path)
        .and_then(|certs| certs.collect())
        .map_err(|e| unreadable(&ca_path, &e))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|certs| certs.collect())
        .map_err(|e| unreadable(&cert_path, &e))?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| unreadable(&key_path, &e))?;
    let (Some(ca), Some(own)) = (authorities.first(), chain.first()) else {
        let empty = if authorities.is_empty() {
            &ca_path
        } else {
            &cert_path
        };
        return Err(format!(
            "peer tls: {} holds no certificate",
            empty.display()
        ));
    };
    let expiries = vec![
        ("ca".to_string(), not_after_unix(ca).unwrap_or(0)),
        (name.to_string(), not_after_unix(own).unwrap_or(0)),
    ];
    let mut roots = RootCertStore::empty();
    for ca in &authorities {
        roots.add(ca.clone()).map_err(|e| {
            format!(
                "peer tls: {} is not a CA certificate: {e}",
                ca_path.display()
            )
        })?;
    }
    let roots = Arc::new(roots);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| format!("peer tls: {}: {e}", ca_path.display()))?;
    let bad_pair = |e: Error| {
        format!(
            "peer tls: {} and {} are not a certificate and its key: {e}",
            cert_path.display(),
            key_path.display()
        )
    };
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("peer tls: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(bad_pair)?;
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("peer tls: {e}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(bad_pair)?;
    // No session resumption: every link's handshake is a full one, both certificates shown
    // and checked (a link is made once and lasts; resuming would save a little CPU a reconnect
    // and keep a certificate checked at an earlier handshake).
    server.send_tls13_tickets = 0;
    client.resumption = rustls::client::Resumption::disabled();
    Ok(PeerTlsConfig {
        client: Arc::new(client),
        server: Arc::new(server),
        expiries,
    })
}

/// What clients over TLS are shown (`tls NAME IP:PORT CERT KEY`): the certificate chain and
/// its key. No client certificate is asked for: clients speak the client protocol, as in clear.
pub struct ClientTlsConfig {
    server: Arc<ServerConfig>,
    /// When the first certificate of the chain expires, in Unix seconds.
    pub expiry: i64,
}

impl fmt::Debug for ClientTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTlsConfig")
            .field("expiry", &self.expiry)
            .finish_non_exhaustive()
    }
}

/// Loads the PEM certificate chain at `cert_path` and its key at `key_path` for clients over
/// TLS (TLS 1.2 and 1.3, what any client speaks). The error names the file and the fault.
pub fn load_for_clients(cert_path: &Path, key_path: &Path) -> Result<ClientTlsConfig, String> {
    let unreadable =
        |path: &Path, e: &dyn fmt::Display| format!("tls: cannot read {}: {e}", path.display());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect())
        .map_err(|e| unreadable(cert_path, &e))?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| unreadable(key_path, &e))?;
    let Some(first) = chain.first() else {
        return Err(format!("tls: {} holds no certificate", cert_path.display()));
    };
    let expiry = not_after_unix(first).unwrap_or(0);
    let server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            format!(
                "tls: {} and {} are not a certificate chain and its key: {e}",
                cert_path.display(),
                key_path.display()
            )
        })?;
    Ok(ClientTlsConfig {
        server: Arc::new(server),
        expiry,
    })
}

/// The TLS state of one connection: rustls's engine, when its handshake must be done by, and
/// whether it is a neighbour's link (both ends authenticated by the herd's CA) or a client's.
pub struct TlsStream {
    session: Connection,
    /// A neighbour's link (`peer tls`), not a client (`tls NAME ...`).
    link: bool,
    handshake_deadline: Instant,
    /// The handshake finished and nobody was told yet ([`TlsStream::take_established`]).
    established_untold: bool,
}

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("handshaking", &self.session.is_handshaking())
            .finish_non_exhaustive()
    }
}

impl TlsStream {
    /// The TLS of a link this server makes to `neighbour`: the certificate the neighbour
    /// presents must come from the herd's CA and name `neighbour`.
    pub fn connect(
        config: &PeerTlsConfig,
        neighbour: &str,
        now: Instant,
        handshake_limit: Duration,
    ) -> Result<TlsStream, String> {
        let name = ServerName::try_from(neighbour.to_string())
            .map_err(|_| format!("'{neighbour}' cannot be named by a certificate"))?;
        let session =
            ClientConnection::new(config.client.clone(), name).map_err(|e| format!("tls: {e}"))?;
        Ok(TlsStream::new(session.into(), true, now, handshake_limit))
    }

    /// The TLS of a link a neighbour made to this server: it must present a certificate from
    /// the herd's CA (its name is checked against its hello, [`TlsStream::certificate_names`]).
    pub fn accept(
        config: &PeerTlsConfig,
        now: Instant,
        handshake_limit: Duration,
    ) -> Result<TlsStream, String> {
        let session =
            ServerConnection::new(config.server.clone()).map_err(|e| format!("tls: {e}"))?;
        Ok(TlsStream::new(session.into(), true, now, handshake_limit))
    }

    /// The TLS of a client's connection to the port of `tls NAME IP:PORT CERT KEY`.
    pub fn accept_client(
        config: &ClientTlsConfig,
        now: Instant,
        handshake_limit: Duration,
    ) -> Result<TlsStream, String> {
        let session =
            ServerConnection::new(config.server.clone()).map_err(|e| format!("tls: {e}"))?;
        Ok(TlsStream::new(session.into(), false, now, handshake_limit))
    }

    fn new(session: Connection, link: bool, now: Instant, handshake_limit: Duration) -> TlsStream {
        TlsStream {
            session,
            link,
            handshake_deadline: now + handshake_limit,
            established_untold: true,
        }
    }

    /// A neighbour's link (`peer tls`), not a client's connection.
    pub fn is_link(&self) -> bool {
        self.link
    }

    /// rustls's engine, for `net.rs` to move bytes through.
    pub fn session(&mut self) -> &mut Connection {
        &mut self.session
    }

    pub fn is_handshaking(&self) -> bool {
        self.session.is_handshaking()
    }

    /// Whether encrypted bytes wait for the socket (then the socket is wanted writable).
    pub fn wants_write(&self) -> bool {
        self.session.wants_write()
    }

    /// When the handshake must be done by, while it is not.
    pub fn deadline(&self) -> Option<Instant> {
        self.is_handshaking().then_some(self.handshake_deadline)
    }

    /// Whether the handshake is still going at `now`, past its deadline.
    pub fn handshake_overdue(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|deadline| deadline <= now)
    }

    /// Once, after the handshake finished: what was agreed, for the log (`TLSv1_3
    /// TLS13_AES_256_GCM_SHA384`).
    pub fn take_established(&mut self) -> Option<String> {
        if !self.established_untold || self.is_handshaking() {
            return None;
        }
        self.established_untold = false;
        let version = self
            .session
            .protocol_version()
            .map_or("?".to_string(), |v| format!("{v:?}"));
        let suite = self
            .session
            .negotiated_cipher_suite()
            .map_or("?".to_string(), |s| format!("{:?}", s.suite()));
        Some(format!("{version} {suite}"))
    }

    /// The other side's certificate (already checked against the herd's CA by the handshake),
    /// once the handshake is done.
    pub fn peer_certificate(&self) -> Option<CertificateDer<'static>> {
        let certs = self.session.peer_certificates()?;
        certs.first().map(|c| c.clone().into_owned())
    }
}

/// Whether `certificate` names the server `name` (as a DNS subject alternative name, as `herd
/// certs` makes them): the accepting side of a link checks that a neighbour's certificate is
/// the one of the server its hello claims to be, so no server can pass for another.
pub fn certificate_names(certificate: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(end_entity) = webpki::EndEntityCert::try_from(certificate) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(name) else {
        return false;
    };
    end_entity.verify_is_valid_for_subject_name(&name).is_ok()
}

/// Why a handshake failed, in the words of SPEC section 9 (and a few more), as logged and
/// counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Failure {
    /// The certificate is not signed by the herd's CA.
    UnknownAuthority,
    /// The certificate does not name the server expected there.
    WrongName,
    /// The certificate has expired (or is not valid yet).
    Expired,
    /// The other side does not speak TLS (a neighbour in clear, or not a herd server).
    NotTls,
    /// No certificate was presented.
    NoCertificate,
    /// Anything else: a bad certificate, no common protocol, a broken message.
    Other,
    /// Not finished within `limit tls-handshake-ms`.
    Timeout,
}

impl Failure {
    pub const ALL: [Failure; 7] = [
        Failure::UnknownAuthority,
        Failure::WrongName,
        Failure::Expired,
        Failure::NotTls,
        Failure::NoCertificate,
        Failure::Other,
        Failure::Timeout,
    ];

    /// The word of the log line and of the metrics label.
    pub fn word(self) -> &'static str {
        match self {
            Failure::UnknownAuthority => "unknown authority",
            Failure::WrongName => "wrong name",
            Failure::Expired => "expired",
            Failure::NotTls => "not TLS",
            Failure::NoCertificate => "no certificate",
            Failure::Other => "other",
            Failure::Timeout => "timeout",
        }
    }

    /// The metrics label (`unknown_authority`).
    pub fn label(self) -> &'static str {
        match self {
            Failure::UnknownAuthority => "unknown_authority",
            Failure::WrongName => "wrong_name",
            Failure::Expired => "expired",
            Failure::NotTls => "not_tls",
            Failure::NoCertificate => "no_certificate",
            Failure::Other => "other",
            Failure::Timeout => "timeout",
        }
    }
}

/// A handshake (or TLS session) that failed: the reason in a word and rustls's own detail.
#[derive(Debug)]
pub struct TlsFailure {
    pub failure: Failure,
    pub detail: String,
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.failure.word(), self.detail)
    }
}

impl From<&Error> for TlsFailure {
    fn from(error: &Error) -> TlsFailure {
        TlsFailure {
            failure: classify(error),
            detail: describe(error),
        }
    }
}

/// The reason of a rustls error: what this side found wrong with the other's certificate, or
/// what the other side said it found wrong with ours (its alert).
pub fn classify(error: &Error) -> Failure {
    match error {
        Error::InvalidCertificate(e) => match e {
            // A certificate signed by another authority of the same name (every herd's CA has
            // the one `herd certs` gives) is found under ours, and its signature fails.
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                Failure::UnknownAuthority
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                Failure::WrongName
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => Failure::Expired,
            _ => Failure::Other,
        },
        // The alert rustls sends for each of the faults above (`AlertDescription::from`).
        Error::AlertReceived(alert) => match alert {
            AlertDescription::UnknownCA | AlertDescription::DecryptError => {
                Failure::UnknownAuthority
            }
            AlertDescription::CertificateExpired => Failure::Expired,
            AlertDescription::CertificateRequired => Failure::NoCertificate,
            _ => Failure::Other,
        },
        Error::InvalidMessage(_)
        | Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. }
        | Error::PeerSentOversizedRecord => Failure::NotTls,
        Error::NoCertificatesPresented => Failure::NoCertificate,
        _ => Failure::Other,
    }
}

/// rustls's error in words, with who found the fault.
fn describe(error: &Error) -> String {
    match error {
        Error::AlertReceived(alert) => format!("the other side refused: {alert:?}"),
        Error::InvalidCertificate(CertificateError::ExpiredContext { time, not_after }) => {
            format!(
                "the other side's certificate expired {} s ago",
                time.as_secs().saturating_sub(not_after.as_secs())
            )
        }
        Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected, ..
        }) => {
            format!("the other side's certificate does not name {expected:?}")
        }
        Error::InvalidCertificate(e) => format!("the other side's certificate: {e:?}"),
        other => other.to_string(),
    }
}

/// Counts of TLS handshakes on links by outcome, for the metrics page.
#[derive(Clone, Debug, Default)]
pub struct HandshakeCounts {
    pub succeeded: u64,
    /// By [`Failure`], in the order of [`Failure::ALL`].
    pub failed: [u64; Failure::ALL.len()],
}

impl HandshakeCounts {
    pub fn fail(&mut self, failure: Failure) {
        if let Some(i) = Failure::ALL.iter().position(|f| *f == failure) {
            self.failed[i] += 1;
        }
    }

    pub fn add(&mut self, other: &HandshakeCounts) {
        self.succeeded += other.succeeded;
        for (a, b) in self.failed.iter_mut().zip(other.failed) {
            *a += b;
        }
    }
}

/// A certificate's `notAfter` in unix seconds, read from its DER (RFC 5280: Certificate ->
/// TBSCertificate -> [0] version, serialNumber, signature, issuer, validity { notBefore,
/// notAfter }). `None` if it cannot be read.
pub fn not_after_unix(certificate: &CertificateDer<'_>) -> Option<i64> {
    let (_, cert, _) = der_element(certificate)?;
    let (_, tbs, _) = der_element(cert)?;
    let mut rest = tbs;
    let (tag, _, after) = der_element(rest)?;
    if tag == 0xa0 {
        rest = after; // the explicit version
    }
    for _ in 0..3 {
        rest = der_element(rest)?.2; // serialNumber, signature, issuer
    }
    let (_, validity, _) = der_element(rest)?;
    let after_not_before = der_element(validity)?.2;
    let (tag, time, _) = der_element(after_not_before)?;
    let text = std::str::from_utf8(time).ok()?;
    parse_asn1_time(tag, text)
}

/// One DER element: its tag, its contents and what follows it.
fn der_element(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (digits, after) = rest.split_at(count);
        rest = after;
        digits
            .iter()
            .fold(0usize, |n, &d| (n << 8) | usize::from(d))
    };
    if rest.len() < length {
        return None;
    }
    let (contents, after) = rest.split_at(length);
    Some((tag, contents, after))
}

/// UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, tag 0x18) to
/// unix seconds.
fn parse_asn1_time(tag: u8, text: &str) -> Option<i64> {
    let digits = text.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if digits.len() == 12 => {
            let yy: i64 = digits[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        0x18 if digits.len() == 14 => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let field = |i: usize| rest.get(i..i + 2)?.parse::<i64>().ok();
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asn1_times_become_unix_seconds() {
        assert_eq!(parse_asn1_time(0x17, "700101000000Z"), Some(0));
        assert_eq!(parse_asn1_time(0x17, "000229120000Z"), Some(951_825_600));
        assert_eq!(
            parse_asn1_time(0x18, "20381231235959Z"),
            Some(2_177_452_799)
        );
        assert_eq!(
            parse_asn1_time(0x18, "20260101000000Z"),
            Some(1_767_225_600)
        );
        assert_eq!(parse_asn1_time(0x17, "2026"), None);
        assert_eq!(parse_asn1_time(0x05, "700101000000Z"), None);
    }

    #[test]
    fn rustls_errors_get_the_words_of_the_spec() {
        let cert = |e| Error::InvalidCertificate(e);
        assert_eq!(
            classify(&cert(CertificateError::UnknownIssuer)),
            Failure::UnknownAuthority
        );
        assert_eq!(
            classify(&cert(CertificateError::NotValidForName)),
            Failure::WrongName
        );
        assert_eq!(classify(&cert(CertificateError::Expired)), Failure::Expired);
        assert_eq!(
            classify(&Error::AlertReceived(AlertDescription::UnknownCA)),
            Failure::UnknownAuthority
        );
        assert_eq!(
            classify(&Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            )),
            Failure::NotTls
        );
        assert_eq!(Failure::NotTls.word(), "not TLS");
    }

    #[test]
    fn counts_add_up_by_reason() {
        let mut counts = HandshakeCounts::default();
        counts.fail(Failure::WrongName);
        counts.fail(Failure::WrongName);
        counts.succeeded += 1;
        let mut total = HandshakeCounts::default();
        total.add(&counts);
        total.add(&counts);
        assert_eq!(total.succeeded, 2);
        assert_eq!(total.failed[1], 4);
    }
}
