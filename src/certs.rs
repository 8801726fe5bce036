//! `herd certs CONFIG [DIR]`: what a herd across machines needs for TLS. A certificate
//! authority for the herd (`ca.pem`, `ca.key`) and, for every server, a key and a certificate
//! signed by it that names the server (`NAME.key`, `NAME.pem`).
//!
//! [`plan`] decides what to make from the server names and the files already in DIR, without
//! touching the disk; [`run`] reads what it must, generates, checks and writes. It never
//! overwrites a file: keys are created readable by their owner only, with `O_EXCL`, and a file
//! that exists is kept. It is a command, not part of the server: nothing here runs in the loop.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, DnsName, ServerName, TrustAnchor, UnixTime};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use webpki::{EndEntityCert, KeyUsage};

use crate::config::Config;
use crate::escape::Escaped;

/// The authority's certificate: every machine of the herd needs it.
pub const CA_CERT: &str = "ca.pem";
/// The authority's key: it signs the servers' certificates and stays off the servers.
pub const CA_KEY: &str = "ca.key";
/// The subject of the authority's certificate. A constant, because a later run signs with
/// `ca.key` under this name again: a server's certificate names its issuer, and it verifies
/// against `ca.pem` only if that name is the subject of `ca.pem`.
pub const CA_NAME: &str = "herd certificate authority";

/// The authority is long-lived (its certificate is on every machine); a server's certificate
/// is renewed yearly (move `NAME.pem` away and run again).
pub const CA_VALID_DAYS: i64 = 3650;
pub const SERVER_VALID_DAYS: i64 = 365;
/// Certificates are valid from an hour before they are made, so that a machine whose clock is
/// a little behind the one that made them still accepts them.
const BACKDATE_SECS: i64 = 3600;

/// Exit status for a config that cannot be certified (as for any config error).
const BAD_INPUT: u8 = 2;
/// Exit status for files that do not fit together or cannot be read or written.
const FAILED: u8 = 1;

/// What happens to one pair of files (`NAME.key` and `NAME.pem`, or the authority's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Neither file exists: a new key and a certificate for it.
    Make,
    /// The key exists and the certificate does not: a new certificate for that key (this is
    /// how a certificate is renewed).
    Certify,
    /// Both exist: left as they are.
    Keep,
}

/// The authority's files in DIR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authority {
    /// What happens to `ca.key` and `ca.pem`.
    Files(Step),
    /// `ca.pem` without `ca.key`, and nothing to sign: nothing needs the key.
    CertificateOnly,
}

/// What one run makes, in the order it is made: the authority first, then the servers in
/// config order.
#[derive(Debug, PartialEq)]
pub struct Plan {
    pub authority: Authority,
    pub servers: Vec<(String, Step)>,
}

impl Plan {
    /// Whether any file is made.
    pub fn makes_anything(&self) -> bool {
        let authority = matches!(self.authority, Authority::Files(Step::Make | Step::Certify));
        authority || self.servers.iter().any(|(_, step)| *step != Step::Keep)
    }
}

/// Why nothing is made. [`Problem::is_config`] tells a problem of the config from one of the
/// files in DIR.
#[derive(Debug, PartialEq)]
pub enum Problem {
    /// A server name a certificate cannot carry (it must be a DNS name).
    BadName { name: String },
    /// A server named `ca`, whose files would be the authority's.
    AuthorityName { name: String },
    /// Two servers whose names differ only in case: a certificate naming one names the other
    /// (DNS names compare without case).
    SameName { first: String, second: String },
    /// `NAME.pem` without `NAME.key`.
    CertificateWithoutKey { name: String },
    /// A certificate to sign, `ca.pem` present and `ca.key` not.
    AuthorityKeyMissing,
    /// A server's files exist but neither of the authority's: what signed them is gone.
    AuthorityGone { name: String },
}

impl Problem {
    /// A problem of the config (exit 2, like any config error), not of the files in DIR.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Problem::BadName { .. } | Problem::AuthorityName { .. } | Problem::SameName { .. }
        )
    }

    /// One line saying what is wrong and what to do; file names are shown in `dir`.
    pub fn describe(&self, dir: &Path) -> String {
        let file = |name: &str| dir.join(name).display().to_string();
        match self {
            Problem::BadName { name } => format!(
                "server '{}' cannot be named in a certificate: a server name must be a DNS name \
                 (letters, digits, '-' and '_', in labels joined by '.')",
                Escaped(name.as_bytes())
            ),
            Problem::AuthorityName { name } => format!(
                "server '{name}' would share its files with the certificate authority \
                 ({CA_CERT}, {CA_KEY}): rename the server"
            ),
            Problem::SameName { first, second } => format!(
                "servers '{first}' and '{second}' differ only in case, and a certificate naming \
                 one names the other: rename one of them"
            ),
            Problem::CertificateWithoutKey { name } => format!(
                "{} exists without {}: move {} away and run herd certs again to make both",
                file(&cert_file(name)),
                file(&key_file(name)),
                file(&cert_file(name)),
            ),
            Problem::AuthorityKeyMissing => format!(
                "{} exists without {}, which signs new certificates: put the herd's {CA_KEY} \
                 back in {} (or, to start a new authority, move {} away: every server then \
                 needs new files)",
                file(CA_CERT),
                file(CA_KEY),
                dir.display(),
                file(CA_CERT),
            ),
            Problem::AuthorityGone { name } => format!(
                "{} and {} exist but neither {} nor {}, which signed them: put the herd's \
                 {CA_CERT} and {CA_KEY} back in {} (or move every server's files away to make \
                 all of them again)",
                file(&key_file(name)),
                file(&cert_file(name)),
                file(CA_CERT),
                file(CA_KEY),
                dir.display(),
            ),
        }
    }
}

pub fn key_file(name: &str) -> String {
    format!("{name}.key")
}

pub fn cert_file(name: &str) -> String {
    format!("{name}.pem")
}

/// Decides what to make for `servers` (in config order) given the names of the files present
/// in DIR. Pure: it reads nothing.
pub fn plan(servers: &[&str], present: &BTreeSet<String>) -> Result<Plan, Problem> {
    for (i, &name) in servers.iter().enumerate() {
        if !is_certificate_name(name) {
            return Err(Problem::BadName { name: name.into() });
        }
        if name.eq_ignore_ascii_case("ca") {
            return Err(Problem::AuthorityName { name: name.into() });
        }
        if let Some(first) = servers[..i].iter().find(|s| s.eq_ignore_ascii_case(name)) {
            return Err(Problem::SameName {
                first: first.to_string(),
                second: name.into(),
            });
        }
    }
    let has = |file: &str| present.contains(file);
    let mut steps = Vec::with_capacity(servers.len());
    for &name in servers {
        let step = match (has(&key_file(name)), has(&cert_file(name))) {
            (false, false) => Step::Make,
            (true, false) => Step::Certify,
            (true, true) => Step::Keep,
            (false, true) => return Err(Problem::CertificateWithoutKey { name: name.into() }),
        };
        steps.push((name.to_string(), step));
    }
    let signs = steps.iter().any(|(_, step)| *step != Step::Keep);
    let authority = match (has(CA_KEY), has(CA_CERT)) {
        (true, true) => Authority::Files(Step::Keep),
        (true, false) => Authority::Files(Step::Certify),
        (false, true) if signs => return Err(Problem::AuthorityKeyMissing),
        (false, true) => Authority::CertificateOnly,
        (false, false) => {
            // A new authority cannot vouch for certificates an old one signed.
            if let Some((name, _)) = steps.iter().find(|(_, step)| *step == Step::Keep) {
                return Err(Problem::AuthorityGone { name: name.clone() });
            }
            Authority::Files(Step::Make)
        }
    };
    Ok(Plan {
        authority,
        servers: steps,
    })
}

/// A name a certificate can carry as its DNS subject alternative name, and that a TLS client
/// can ask for: a DNS name without a trailing dot. (This also keeps `/` out of file names.)
fn is_certificate_name(name: &str) -> bool {
    !name.ends_with('.') && DnsName::try_from(name).is_ok()
}

/// The authority's certificate parameters. The subject and key identifier method are those a
/// later run signs under again (see [`CA_NAME`]).
fn authority_params(now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    // It signs servers' certificates only, never another authority's.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - time::Duration::seconds(BACKDATE_SECS);
    params.not_after = now + time::Duration::days(CA_VALID_DAYS);
    params
}

/// Server `name`'s certificate parameters: its name as the DNS subject alternative name (what
/// a TLS peer checks) and as the common name (what a person reads), usable for both ends of a
/// link (server and client authentication).
fn server_params(name: &str, now: OffsetDateTime) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = vec![SanType::DnsName(name.try_into()?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - time::Duration::seconds(BACKDATE_SECS);
    params.not_after = now + time::Duration::days(SERVER_VALID_DAYS);
    Ok(params)
}

/// A serial number unique to this key and this moment: two certificates for one key (a
/// renewal) must not share one under the same issuer. 16 bytes of SHA-256, the top bit clear
/// so that it is a positive number.
fn serial_number(key: &impl PublicKeyData, now: OffsetDateTime) -> SerialNumber {
    let mut hash = Sha256::new();
    hash.update(key.subject_public_key_info());
    hash.update(now.unix_timestamp_nanos().to_be_bytes());
    let mut bytes = hash.finalize()[..16].to_vec();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// The signature algorithms a certificate made here may be checked with: those rustls accepts
/// with *ring*, for keys rcgen can sign with (`ca.key` may be one brought from elsewhere).
static SIGNATURE_ALGORITHMS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ED25519,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
];

/// The authority, ready to sign: its key under its name, and its certificate to check what it
/// signs against.
struct Signer {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
}

impl Signer {
    /// Signs a certificate for server `name`'s key, and checks it as a link's peer will: that
    /// it chains to `ca.pem`, names `name`, and serves for both ends of a TLS connection.
    fn sign(
        &self,
        name: &str,
        key: &KeyPair,
        now: OffsetDateTime,
        dir: &Path,
    ) -> Result<String, String> {
        let mut params = server_params(name, now).map_err(|e| format!("server '{name}': {e}"))?;
        params.serial_number = Some(serial_number(key, now));
        let cert = params
            .signed_by(key, &self.issuer)
            .map_err(|e| format!("cannot sign a certificate for '{name}': {e}"))?;
        let anchor = webpki::anchor_from_trusted_cert(&self.cert).map_err(|e| {
            format!(
                "{} is not a certificate authority's certificate: {e}",
                dir.join(CA_CERT).display()
            )
        })?;
        check_server_cert(cert.der(), name, &anchor, now).map_err(|e| {
            format!(
                "a certificate signed with {key} does not verify against {cert} ({e}): {cert} \
                 and {key} are not one authority made by herd certs",
                key = dir.join(CA_KEY).display(),
                cert = dir.join(CA_CERT).display(),
            )
        })?;
        Ok(cert.pem())
    }
}

/// Checks a server's certificate as a link's peer will: chained to `anchor` for server and
/// client authentication, with `name` as its DNS name.
fn check_server_cert(
    der: &CertificateDer<'_>,
    name: &str,
    anchor: &TrustAnchor<'_>,
    now: OffsetDateTime,
) -> Result<(), webpki::Error> {
    let cert = EndEntityCert::try_from(der)?;
    let secs = u64::try_from(now.unix_timestamp()).unwrap_or(0);
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
    let anchors = std::slice::from_ref(anchor);
    for usage in [KeyUsage::server_auth(), KeyUsage::client_auth()] {
        cert.verify_for_usage(SIGNATURE_ALGORITHMS, anchors, &[], time, usage, None, None)?;
    }
    let dns_name = DnsName::try_from(name)
        .map_err(|_| webpki::Error::MalformedDnsIdentifier)?
        .to_owned();
    cert.verify_is_valid_for_subject_name(&ServerName::DnsName(dns_name))
}

/// `herd certs CONFIG [DIR]`: prints what it made and what each machine needs on stdout, a
/// problem on stderr. Returns the exit status: 0, 2 for a config it cannot certify, 1 for files
/// that do not fit together or cannot be read or written.
pub fn run(config_path: &Path, config: &Config, dir: Option<&Path>) -> u8 {
    let dir = match dir {
        Some(dir) => dir.to_path_buf(),
        None => config_path.parent().unwrap_or(Path::new("")).join("tls"),
    };
    let present = match files_in(&dir) {
        Ok(present) => present,
        Err(e) => return fail(FAILED, &format!("cannot read {}: {e}", dir.display())),
    };
    let servers: Vec<&str> = config.servers.iter().map(|s| s.name.as_str()).collect();
    let plan = match plan(&servers, &present) {
        Ok(plan) => plan,
        Err(problem) if problem.is_config() => {
            eprintln!("{}: {}", config_path.display(), problem.describe(&dir));
            return BAD_INPUT;
        }
        Err(problem) => return fail(FAILED, &problem.describe(&dir)),
    };
    let now = OffsetDateTime::from(SystemTime::now());
    if let Err(problem) = carry_out(&plan, &dir, now) {
        return fail(FAILED, &problem);
    }
    print_what_goes_where(&plan, &dir);
    0
}

/// A line of the report on stdout. A closed stdout (`herd certs ... | head`) must not stop a
/// run between two files, so a failed write is ignored, where `println!` would panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stdout(), $($arg)*);
    }};
}

fn fail(code: u8, problem: &str) -> u8 {
    eprintln!("herd certs: {problem}");
    code
}

/// The names of the files in `dir`; none if it does not exist yet.
fn files_in(dir: &Path) -> io::Result<BTreeSet<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(e),
    };
    let mut names = BTreeSet::new();
    for entry in entries {
        // A name that is not UTF-8 cannot be one of ours.
        if let Ok(name) = entry?.file_name().into_string() {
            names.insert(name);
        }
    }
    Ok(names)
}

/// Generates what `plan` says, then writes it: the authority first, each key before its
/// certificate, so that a run cut short leaves at worst a key without its certificate, which
/// the next run certifies. Everything is generated and checked before the first file is
/// written.
fn carry_out(plan: &Plan, dir: &Path, now: OffsetDateTime) -> Result<(), String> {
    if !plan.makes_anything() {
        match plan.authority {
            Authority::CertificateOnly => say!(
                "kept {}: it exists ({} is elsewhere; nothing to sign)",
                dir.join(CA_CERT).display(),
                dir.join(CA_KEY).display()
            ),
            Authority::Files(_) => print_kept(dir, CA_KEY, CA_CERT),
        }
        for (name, _) in &plan.servers {
            print_kept(dir, &key_file(name), &cert_file(name));
        }
        say!("nothing to make: every server has its key and certificate");
        return Ok(());
    }
    let mut writes: Vec<Task> = Vec::new();
    let signer = match plan.authority {
        Authority::CertificateOnly => None,
        Authority::Files(step) => Some(authority(step, dir, now, &mut writes)?),
    };
    for (name, step) in &plan.servers {
        let key = match step {
            Step::Keep => {
                writes.push(Task::Kept(key_file(name), cert_file(name)));
                continue;
            }
            Step::Make => {
                let key = new_key()?;
                writes.push(Task::Key(key_file(name), key.serialize_pem()));
                key
            }
            Step::Certify => read_key(&dir.join(key_file(name)))?,
        };
        // The plan signs nothing without the authority's key.
        let signer = signer.as_ref().ok_or("nothing to sign with")?;
        let pem = signer.sign(name, &key, now, dir)?;
        let until = (now + time::Duration::days(SERVER_VALID_DAYS)).date();
        let what = format!("server {name}, valid until {until}");
        let line = made_line(dir, *step, &key_file(name), &cert_file(name), &what);
        writes.push(Task::Cert(cert_file(name), pem, line));
    }
    fs::create_dir_all(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    for write in writes {
        write.carry_out(dir)?;
    }
    Ok(())
}

/// One file to write, or a pair kept, in the order the run reports them.
enum Task {
    /// A key file and its contents.
    Key(String, String),
    /// A certificate file, its contents, and the line that reports it made.
    Cert(String, String, String),
    /// A key and a certificate that exist.
    Kept(String, String),
}

impl Task {
    fn carry_out(self, dir: &Path) -> Result<(), String> {
        match self {
            Task::Key(file, pem) => write_new(&dir.join(file), pem.as_bytes(), 0o600),
            Task::Cert(file, pem, line) => {
                write_new(&dir.join(file), pem.as_bytes(), 0o644)?;
                say!("{line}");
                Ok(())
            }
            Task::Kept(key, cert) => {
                print_kept(dir, &key, &cert);
                Ok(())
            }
        }
    }
}

/// `made KEY and CERT: WHAT`, or for a key that existed `made CERT for the existing KEY: WHAT`.
fn made_line(dir: &Path, step: Step, key: &str, cert: &str, what: &str) -> String {
    let (key, cert) = (dir.join(key), dir.join(cert));
    match step {
        Step::Certify => format!(
            "made {} for the existing {}: {what}",
            cert.display(),
            key.display()
        ),
        _ => format!("made {} and {}: {what}", key.display(), cert.display()),
    }
}

fn print_kept(dir: &Path, key: &str, cert: &str) {
    say!(
        "kept {} and {}: they exist",
        dir.join(key).display(),
        dir.join(cert).display()
    );
}

/// The authority as the plan says: made, certified anew, or read. Queues the files it makes.
fn authority(
    step: Step,
    dir: &Path,
    now: OffsetDateTime,
    writes: &mut Vec<Task>,
) -> Result<Signer, String> {
    let key = match step {
        Step::Make => {
            let key = new_key()?;
            writes.push(Task::Key(CA_KEY.into(), key.serialize_pem()));
            key
        }
        Step::Certify | Step::Keep => read_key(&dir.join(CA_KEY))?,
    };
    let params = authority_params(now);
    let cert = match step {
        Step::Keep => {
            let path = dir.join(CA_CERT);
            let pem =
                fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            CertificateDer::from_pem_slice(&pem)
                .map_err(|e| format!("{} is not a PEM certificate: {e}", path.display()))?
        }
        Step::Make | Step::Certify => {
            let mut params = params.clone();
            params.serial_number = Some(serial_number(&key, now));
            let cert = params
                .self_signed(&key)
                .map_err(|e| format!("cannot make the authority's certificate: {e}"))?;
            let until = (now + time::Duration::days(CA_VALID_DAYS)).date();
            let what = format!("the herd's certificate authority, valid until {until}");
            let line = made_line(dir, step, CA_KEY, CA_CERT, &what);
            writes.push(Task::Cert(CA_CERT.into(), cert.pem(), line));
            cert.der().clone()
        }
    };
    if step == Step::Keep {
        writes.push(Task::Kept(CA_KEY.into(), CA_CERT.into()));
    }
    Ok(Signer {
        issuer: Issuer::new(params, key),
        cert,
    })
}

/// A new ECDSA P-256 key: what rustls (with *ring*) takes for both ends of TLS 1.3, and what
/// any TLS client knows.
fn new_key() -> Result<KeyPair, String> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| format!("cannot make a key: {e}"))
}

fn read_key(path: &Path) -> Result<KeyPair, String> {
    let pem =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    KeyPair::from_pem(&pem).map_err(|e| {
        format!(
            "{} is not a private key herd certs can sign with (want PKCS#8 PEM): {e}",
            path.display()
        )
    })
}

/// Creates `path` with `mode` (so a key is never readable by others, not even for a moment)
/// and writes `contents`; fails if it exists (`O_EXCL`), so nothing is ever overwritten. A
/// file this call created and could not finish is removed.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), String> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => {
                format!("{} appeared meanwhile: not overwritten", path.display())
            }
            _ => format!("cannot write {}: {e}", path.display()),
        })?;
    if let Err(e) = file.write_all(contents).and_then(|()| file.sync_all()) {
        drop(file);
        let _ = fs::remove_file(path);
        return Err(format!("cannot write {}: {e}", path.display()));
    }
    Ok(())
}

/// What each machine needs, and where `ca.key` goes.
fn print_what_goes_where(plan: &Plan, dir: &Path) {
    say!("copy to each server's machine its own key and certificate, and {CA_CERT}:");
    let width = plan.servers.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let path = |file: &str| dir.join(file).display().to_string();
    for (name, _) in &plan.servers {
        say!(
            "  {name:width$}  {} {} {}",
            path(&cert_file(name)),
            path(&key_file(name)),
            path(CA_CERT)
        );
    }
    if plan.authority != Authority::CertificateOnly {
        say!(
            "keep {} off the servers: herd certs signs the next server's certificate with it",
            path(CA_KEY)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn steps(plan: &Plan) -> Vec<(&str, Step)> {
        plan.servers.iter().map(|(n, s)| (n.as_str(), *s)).collect()
    }

    #[test]
    fn an_empty_dir_makes_the_authority_and_every_server() {
        let plan = plan(&["Bailey", "Bona"], &files(&[])).unwrap();
        assert_eq!(plan.authority, Authority::Files(Step::Make));
        assert_eq!(steps(&plan), [("Bailey", Step::Make), ("Bona", Step::Make)]);
        assert!(plan.makes_anything());
    }

    #[test]
    fn a_complete_dir_makes_nothing() {
        let present = files(&[
            "ca.pem",
            "ca.key",
            "Bailey.pem",
            "Bailey.key",
            "Bona.pem",
            "Bona.key",
        ]);
        let plan = plan(&["Bailey", "Bona"], &present).unwrap();
        assert_eq!(plan.authority, Authority::Files(Step::Keep));
        assert_eq!(steps(&plan), [("Bailey", Step::Keep), ("Bona", Step::Keep)]);
        assert!(!plan.makes_anything());
    }

    #[test]
    fn a_new_server_is_made_with_the_existing_authority() {
        let present = files(&["ca.pem", "ca.key", "Bailey.pem", "Bailey.key"]);
        let plan = plan(&["Bailey", "Clark"], &present).unwrap();
        assert_eq!(plan.authority, Authority::Files(Step::Keep));
        assert_eq!(
            steps(&plan),
            [("Bailey", Step::Keep), ("Clark", Step::Make)]
        );
    }

    #[test]
    fn a_key_without_its_certificate_is_certified() {
        let present = files(&["ca.pem", "ca.key", "Bailey.key"]);
        let server = plan(&["Bailey"], &present).unwrap();
        assert_eq!(steps(&server), [("Bailey", Step::Certify)]);

        let present = files(&["ca.key", "Bailey.pem", "Bailey.key"]);
        let authority = plan(&["Bailey"], &present).unwrap();
        assert_eq!(authority.authority, Authority::Files(Step::Certify));
        assert_eq!(steps(&authority), [("Bailey", Step::Keep)]);
        assert!(authority.makes_anything());
    }

    #[test]
    fn a_certificate_without_its_key_is_a_problem() {
        let present = files(&["ca.pem", "ca.key", "Bailey.pem"]);
        assert_eq!(
            plan(&["Bailey"], &present),
            Err(Problem::CertificateWithoutKey {
                name: "Bailey".into()
            })
        );
    }

    #[test]
    fn the_authority_without_its_key_signs_nothing() {
        let present = files(&["ca.pem", "Bailey.pem", "Bailey.key"]);
        assert_eq!(
            plan(&["Bailey", "Clark"], &present),
            Err(Problem::AuthorityKeyMissing)
        );
        // With nothing to sign, the key is not needed.
        let plan = plan(&["Bailey"], &present).unwrap();
        assert_eq!(plan.authority, Authority::CertificateOnly);
        assert!(!plan.makes_anything());
    }

    #[test]
    fn servers_files_without_their_authority_are_a_problem() {
        let present = files(&["Bailey.pem", "Bailey.key"]);
        assert_eq!(
            plan(&["Bailey", "Clark"], &present),
            Err(Problem::AuthorityGone {
                name: "Bailey".into()
            })
        );
    }

    #[test]
    fn other_files_in_the_dir_are_ignored() {
        let present = files(&["README", "Bailey.pem.old", "ca.pem~"]);
        let plan = plan(&["Bailey"], &present).unwrap();
        assert_eq!(plan.authority, Authority::Files(Step::Make));
        assert_eq!(steps(&plan), [("Bailey", Step::Make)]);
    }

    #[test]
    fn names_a_certificate_cannot_carry_are_config_problems() {
        for name in ["a/b", "..", "a..b", "-a", "a.", "12", "é", "a b", ""] {
            let problem = plan(&["Bailey", name], &files(&[])).unwrap_err();
            assert_eq!(problem, Problem::BadName { name: name.into() }, "{name:?}");
            assert!(problem.is_config());
        }
        for name in ["Campbell", "node-1", "eu.herd", "db_2", "x"] {
            assert!(plan(&[name], &files(&[])).is_ok(), "{name:?}");
        }
    }

    #[test]
    fn a_server_named_ca_is_a_config_problem() {
        let problem = plan(&["CA"], &files(&[])).unwrap_err();
        assert_eq!(problem, Problem::AuthorityName { name: "CA".into() });
        assert!(problem.is_config());
    }

    #[test]
    fn names_that_differ_only_in_case_are_a_config_problem() {
        let problem = plan(&["Bona", "Clark", "bona"], &files(&[])).unwrap_err();
        assert_eq!(
            problem,
            Problem::SameName {
                first: "Bona".into(),
                second: "bona".into()
            }
        );
        assert!(problem.is_config());
    }

    #[test]
    fn problems_name_the_files_and_what_to_do() {
        let dir = Path::new("tls");
        let missing = Problem::AuthorityKeyMissing.describe(dir);
        assert!(
            missing.contains("tls/ca.pem exists without tls/ca.key"),
            "{missing}"
        );
        assert!(missing.contains("put the herd's ca.key back"), "{missing}");
        let alone = Problem::CertificateWithoutKey {
            name: "Bailey".into(),
        }
        .describe(dir);
        assert!(alone.contains("move tls/Bailey.pem away"), "{alone}");
    }

    #[test]
    fn a_server_certificate_names_the_server_for_both_ends() {
        let now = OffsetDateTime::from(SystemTime::now());
        let ca_key = new_key().unwrap();
        let ca_cert = authority_params(now).self_signed(&ca_key).unwrap();
        let signer = Signer {
            issuer: Issuer::new(authority_params(now), ca_key),
            cert: ca_cert.der().clone(),
        };
        let key = new_key().unwrap();
        let pem = signer.sign("Bailey", &key, now, Path::new("tls")).unwrap();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let anchor = webpki::anchor_from_trusted_cert(&signer.cert).unwrap();
        assert_eq!(check_server_cert(&der, "Bailey", &anchor, now), Ok(()));
        assert!(check_server_cert(&der, "Bona", &anchor, now).is_err());
    }

    #[test]
    fn an_authority_made_again_for_its_key_vouches_for_what_it_signed() {
        // A renewed ca.pem (same key, made later) verifies certificates signed under the old one.
        let then = OffsetDateTime::from(SystemTime::now()) - time::Duration::days(30);
        let now = OffsetDateTime::from(SystemTime::now());
        let ca_key = new_key().unwrap();
        let old_ca = Signer {
            cert: authority_params(then)
                .self_signed(&ca_key)
                .unwrap()
                .der()
                .clone(),
            issuer: Issuer::new(
                authority_params(then),
                KeyPair::from_pem(&ca_key.serialize_pem()).unwrap(),
            ),
        };
        let key = new_key().unwrap();
        let pem = old_ca.sign("Bailey", &key, then, Path::new("tls")).unwrap();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let mut params = authority_params(now);
        params.serial_number = Some(serial_number(&ca_key, now));
        let new_ca = params.self_signed(&ca_key).unwrap();
        let anchor = webpki::anchor_from_trusted_cert(new_ca.der()).unwrap();
        assert_eq!(check_server_cert(&der, "Bailey", &anchor, now), Ok(()));
    }

    #[test]
    fn another_authority_with_the_same_name_does_not_vouch() {
        let now = OffsetDateTime::from(SystemTime::now());
        let signer = Signer {
            issuer: Issuer::new(authority_params(now), new_key().unwrap()),
            cert: authority_params(now)
                .self_signed(&new_key().unwrap())
                .unwrap()
                .der()
                .clone(),
        };
        let error = signer
            .sign("Bailey", &new_key().unwrap(), now, Path::new("tls"))
            .unwrap_err();
        assert!(
            error.contains("does not verify against tls/ca.pem"),
            "{error}"
        );
    }

    #[test]
    fn serial_numbers_differ_for_one_key_made_again() {
        let key = new_key().unwrap();
        let now = OffsetDateTime::from(SystemTime::now());
        let later = now + time::Duration::seconds(1);
        assert_ne!(serial_number(&key, now), serial_number(&key, later));
        assert!(serial_number(&key, now).to_bytes()[0] < 0x80);
    }
}
