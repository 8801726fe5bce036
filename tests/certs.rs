//! `herd certs CONFIG [DIR]`, run as the real binary: the files it makes and their modes, that
//! every server's certificate chains to the herd's authority and names the server (checked
//! with the verifier rustls uses, by a TLS 1.3 handshake with both ends authenticated, and by
//! `openssl verify` where it is installed), and that it never overwrites a file.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use herd_test_support::harness::{program_or_skip, TempDir};
use herd_test_support::run::{run_herd, Finished};
use rustls::crypto::ring::default_provider;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

/// A config of `names`, on ports that are never opened (certs reads the names only).
fn write_config(dir: &TempDir, names: &[&str]) {
    let mut text = String::new();
    for (i, name) in names.iter().enumerate() {
        text.push_str(&format!("server {name} 127.0.0.1:{}\n", 20000 + i));
    }
    dir.write("herd.conf", &text).unwrap();
}

#[track_caller]
fn certs(dir: &TempDir, args: &[&str]) -> Finished {
    let mut all = vec!["certs", "herd.conf"];
    all.extend_from_slice(args);
    run_herd(&all, dir.path())
}

#[track_caller]
fn certs_ok(dir: &TempDir) -> Finished {
    let run = certs(dir, &[]);
    assert_eq!(
        run.status.code(),
        Some(0),
        "stdout {:?} stderr {:?}",
        run.stdout,
        run.stderr
    );
    run
}

/// Every file in `dir` and its contents.
fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap())
                .map(|e| {
                    let name = e.file_name().into_string().unwrap();
                    (name, fs::read(e.path()).unwrap())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn file_names(files: &BTreeMap<String, Vec<u8>>) -> Vec<&str> {
    files.keys().map(String::as_str).collect()
}

fn cert(dir: &Path, file: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(dir.join(file)).unwrap()
}

fn key(dir: &Path, file: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(dir.join(file)).unwrap()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(default_provider())
}

/// Checks `name`'s certificate in `dir` as the other end of a link will: it chains to `ca.pem`
/// for both server and client authentication and carries `name` as a DNS name, and no other.
#[track_caller]
fn assert_certifies(dir: &Path, name: &str) {
    let ca = cert(dir, "ca.pem");
    let anchor = webpki::anchor_from_trusted_cert(&ca).unwrap();
    let server = cert(dir, &format!("{name}.pem"));
    let end_entity = webpki::EndEntityCert::try_from(&server).unwrap();
    let algorithms = default_provider().signature_verification_algorithms;
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        end_entity
            .verify_for_usage(
                algorithms.all,
                std::slice::from_ref(&anchor),
                &[],
                UnixTime::now(),
                usage,
                None,
                None,
            )
            .unwrap_or_else(|e| panic!("{name}.pem does not verify against ca.pem: {e:?}"));
    }
    let named = |n: &str| ServerName::DnsName(DnsName::try_from(n).unwrap().to_owned());
    end_entity
        .verify_is_valid_for_subject_name(&named(name))
        .unwrap_or_else(|e| panic!("{name}.pem does not name {name}: {e:?}"));
    assert!(
        end_entity
            .verify_is_valid_for_subject_name(&named("not-the-server"))
            .is_err(),
        "{name}.pem names only {name}"
    );
}

#[track_caller]
fn assert_mode(path: &Path, mode: u32) {
    let found = fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(found, mode, "{} has mode {found:o}", path.display());
}

#[test]
fn makes_an_authority_and_a_key_and_certificate_for_every_server() {
    let dir = TempDir::new("certs").unwrap();
    write_config(&dir, &["Alpha", "Beta"]);
    let run = certs_ok(&dir);

    // DIR defaults to tls beside the config.
    let tls = dir.path().join("tls");
    let files = contents(&tls);
    assert_eq!(
        file_names(&files),
        [
            "Alpha.key",
            "Alpha.pem",
            "Beta.key",
            "Beta.pem",
            "ca.key",
            "ca.pem"
        ]
    );
    for key in ["ca.key", "Alpha.key", "Beta.key"] {
        assert_mode(&tls.join(key), 0o600);
    }
    for name in ["Alpha", "Beta"] {
        assert_certifies(&tls, name);
    }
    for line in [
        "made tls/ca.key and tls/ca.pem: the herd's certificate authority, valid until",
        "made tls/Alpha.key and tls/Alpha.pem: server Alpha, valid until",
        "made tls/Beta.key and tls/Beta.pem: server Beta, valid until",
        "  Alpha  tls/Alpha.pem tls/Alpha.key tls/ca.pem",
        "  Beta   tls/Beta.pem tls/Beta.key tls/ca.pem",
        "keep tls/ca.key off the servers",
    ] {
        assert!(run.stdout.contains(line), "{line:?} in {}", run.stdout);
    }
    assert_eq!(run.stderr, "");
}

#[test]
fn the_keys_are_owner_only_from_the_moment_they_exist_whatever_the_umask() {
    let dir = TempDir::new("certs").unwrap();
    write_config(&dir, &["Alpha"]);
    // A umask that leaves everything open: the modes come from the open call, not a chmod.
    let shell = format!(
        "umask 000 && exec '{}' certs herd.conf out",
        herd_test_support::harness::herd_bin().display()
    );
    let status = Command::new("sh")
        .arg("-c")
        .arg(shell)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let out = dir.path().join("out");
    assert_mode(&out.join("ca.key"), 0o600);
    assert_mode(&out.join("Alpha.key"), 0o600);
    assert_mode(&out.join("ca.pem"), 0o644);
    assert_mode(&out.join("Alpha.pem"), 0o644);
}

#[test]
fn two_servers_certificates_authenticate_both_ends_of_a_tls_link() {
    let dir = TempDir::new("certs").unwrap();
    write_config(&dir, &["Alpha", "Beta", "Gamma"]);
    certs_ok(&dir);
    let tls = dir.path().join("tls");

    // Alpha connects to Beta, each with its own certificate, each trusting ca.pem only.
    let presented = handshake(&tls, "Alpha", "Beta", "Beta").unwrap();
    assert_eq!(presented, cert(&tls, "Alpha.pem"), "Beta saw Alpha's cert");

    // Gamma's certificate is not Beta's: a link that expects Beta refuses it.
    let refused = handshake(&tls, "Alpha", "Gamma", "Beta").unwrap_err();
    assert!(refused.contains("NotValidForName"), "{refused}");
}

/// A TLS 1.3 handshake in memory: `client` connects expecting `expected`, and `server`
/// answers with its own certificate, asking for the client's. Returns the certificate the
/// server was shown.
fn handshake(
    tls: &Path,
    client: &str,
    server: &str,
    expected: &str,
) -> Result<CertificateDer<'static>, String> {
    let mut roots = RootCertStore::empty();
    roots.add(cert(tls, "ca.pem")).unwrap();
    let roots = Arc::new(roots);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .unwrap();
    let server_config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        // Also checks that the key is the certificate's.
        .with_single_cert(
            vec![cert(tls, &format!("{server}.pem"))],
            key(tls, &format!("{server}.key")),
        )
        .unwrap();
    let client_config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![cert(tls, &format!("{client}.pem"))],
            key(tls, &format!("{client}.key")),
        )
        .unwrap();
    let name = ServerName::try_from(expected.to_string()).unwrap();
    let mut client = ClientConnection::new(Arc::new(client_config), name).unwrap();
    let mut server = ServerConnection::new(Arc::new(server_config)).unwrap();
    for _ in 0..10 {
        if !client.is_handshaking() && !server.is_handshaking() {
            let presented = server.peer_certificates().ok_or("no client certificate")?;
            return Ok(presented[0].clone().into_owned());
        }
        let mut wire = Vec::new();
        client.write_tls(&mut wire).unwrap();
        server.read_tls(&mut wire.as_slice()).unwrap();
        server.process_new_packets().map_err(|e| format!("{e:?}"))?;
        let mut wire = Vec::new();
        server.write_tls(&mut wire).unwrap();
        client.read_tls(&mut wire.as_slice()).unwrap();
        client.process_new_packets().map_err(|e| format!("{e:?}"))?;
    }
    Err("the handshake did not finish".into())
}

#[test]
fn openssl_verifies_the_certificates_for_both_purposes() {
    let Some(openssl) = program_or_skip("openssl", "apt-get install openssl") else {
        return;
    };
    let dir = TempDir::new("certs").unwrap();
    write_config(&dir, &["Alpha"]);
    certs_ok(&dir);
    let tls = dir.path().join("tls");
    for purpose in ["sslserver", "sslclient"] {
        let out = Command::new(&openssl)
            .args([
                "verify",
                "-CAfile",
                "ca.pem",
                "-purpose",
                purpose,
                "Alpha.pem",
            ])
            .current_dir(&tls)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl verify {purpose}: {out:?}");
    }
    let text = Command::new(&openssl)
        .args([
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-in",
            "Alpha.pem",
        ])
        .current_dir(&tls)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("DNS:Alpha"), "{text}");
}

#[test]
fn running_again_makes_nothing_and_after_a_new_server_only_its_files() {
    let dir = TempDir::new("certs").unwrap();
    write_config(&dir, &["Alpha", "Beta"]);
    certs_ok(&dir);
    let tls = dir.path().join("tls");
    let before = contents(&tls);

    let again = certs_ok(&dir);
    assert_eq!(contents(&tls), before, "a second run changed the files");
    assert!(!again.stdout.contains("made "), "{}", again.stdout);
    for line in [
        "kept tls/ca.key and tls/ca.pem: they exist",
        "kept tls/Alpha.key and tls/Alpha.pem: they exist",
        "nothing to make",
    ] {
        assert!(again.stdout.contains(line), "{line:?} in {}", again.stdout);
    }

    write_config(&dir, &["Alpha", "Beta", "Gamma"]);
    let added = certs_ok(&dir);
    let after = contents(&tls);
    assert_eq!(
        file_names(&after),
        [
            "Alpha.key",
            "Alpha.pem",
            "Beta.key",
            "Beta.pem",
            "Gamma.key",
            "Gamma.pem",
            "ca.key",
            "ca.pem"
        ]
    );
    for (file, bytes) in &before {
        assert_eq!(&after[file], bytes, "{file} was rewritten");
    }
    assert_mode(&tls.join("Gamma.key"), 0o600);
    assert_certifies(&tls, "Gamma");
    assert!(
        added
            .stdout
            .contains("made tls/Gamma.key and tls/Gamma.pem: server Gamma"),
        "{}",
        added.stdout
    );
    assert_eq!(added.stdout.matches("made ").count(), 1, "{}", added.stdout);
    // The old servers and the new one make links with each other.
    handshake(&tls, "Gamma", "Alpha", "Alpha").unwrap();
}

#[test]
fn a_certificate_moved_away_is_made_again_for_the_same_key() {
    let dir = TempDir::new("certs").unwrap();
    write_config(&dir, &["Alpha", "Beta"]);
    certs_ok(&dir);
    let tls = dir.path().join("tls");
    let before = contents(&tls);

    fs::rename(tls.join("Alpha.pem"), dir.path().join("Alpha.pem.old")).unwrap();
    let run = certs_ok(&dir);
    assert!(
        run.stdout
            .contains("made tls/Alpha.pem for the existing tls/Alpha.key: server Alpha"),
        "{}",
        run.stdout
    );
    let after = contents(&tls);
    assert_ne!(after["Alpha.pem"], before["Alpha.pem"]);
    assert_eq!(after["Alpha.key"], before["Alpha.key"]);
    assert_certifies(&tls, "Alpha");
    handshake(&tls, "Beta", "Alpha", "Alpha").unwrap();

    // The authority's certificate too: the servers' certificates stay valid under the new one.
    fs::rename(tls.join("ca.pem"), dir.path().join("ca.pem.old")).unwrap();
    let run = certs_ok(&dir);
    assert!(
        run.stdout
            .contains("made tls/ca.pem for the existing tls/ca.key"),
        "{}",
        run.stdout
    );
    assert_ne!(contents(&tls)["ca.pem"], before["ca.pem"]);
    assert_certifies(&tls, "Alpha");
    assert_certifies(&tls, "Beta");
}

#[test]
fn files_that_do_not_fit_together_are_refused_and_nothing_is_written() {
    let dir = TempDir::new("certs").unwrap();
    write_config(&dir, &["Alpha", "Beta"]);
    let tls = dir.path().join("tls");
    fs::create_dir(&tls).unwrap();

    // A certificate without its key: making a key would leave the two apart.
    fs::write(tls.join("Beta.pem"), "not a certificate").unwrap();
    let run = certs(&dir, &[]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert_eq!(
        run.stderr.trim(),
        "herd certs: tls/Beta.pem exists without tls/Beta.key: move tls/Beta.pem away and run \
         herd certs again to make both"
    );
    assert_eq!(file_names(&contents(&tls)), ["Beta.pem"]);
    assert_eq!(
        fs::read(tls.join("Beta.pem")).unwrap(),
        b"not a certificate"
    );
    fs::remove_file(tls.join("Beta.pem")).unwrap();

    // The authority's certificate without its key cannot sign a new server's certificate.
    write_config(&dir, &["Alpha"]);
    certs_ok(&dir);
    fs::remove_file(tls.join("ca.key")).unwrap();
    let before = contents(&tls);
    let kept = certs_ok(&dir);
    assert!(kept.stdout.contains("nothing to make"), "{}", kept.stdout);
    write_config(&dir, &["Alpha", "Beta"]);
    let run = certs(&dir, &[]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("tls/ca.pem exists without tls/ca.key, which signs new certificates: put the herd's ca.key back in tls"),
        "{}",
        run.stderr
    );
    assert_eq!(contents(&tls), before);
}

#[test]
fn a_ca_key_that_is_not_the_authoritys_signs_nothing() {
    let dir = TempDir::new("certs").unwrap();
    write_config(&dir, &["Alpha"]);
    certs_ok(&dir);
    let tls = dir.path().join("tls");
    // Another herd's authority key in place of this one's.
    let other = TempDir::new("certs").unwrap();
    write_config(&other, &["Alpha"]);
    certs_ok(&other);
    fs::remove_file(tls.join("ca.key")).unwrap();
    fs::copy(other.path().join("tls/ca.key"), tls.join("ca.key")).unwrap();
    let before = contents(&tls);

    write_config(&dir, &["Alpha", "Beta"]);
    let run = certs(&dir, &[]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("does not verify against tls/ca.pem"),
        "{}",
        run.stderr
    );
    assert_eq!(contents(&tls), before, "nothing is written");
}

#[test]
fn a_bad_config_is_a_config_error() {
    let dir = TempDir::new("certs").unwrap();
    dir.write(
        "herd.conf",
        "server Alpha 127.0.0.1:20000\nlnk Alpha Alpha\n",
    )
    .unwrap();
    let run = certs(&dir, &[]);
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert_eq!(run.stderr.trim(), "herd.conf:2: unknown directive 'lnk'");

    // A server name a certificate cannot carry.
    dir.write("herd.conf", "server a/b 127.0.0.1:20000\n")
        .unwrap();
    let run = certs(&dir, &[]);
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with("herd.conf: server 'a/b' cannot be named in a certificate"),
        "{}",
        run.stderr
    );
    assert!(!dir.path().join("tls").exists());
}

#[test]
fn a_dir_that_cannot_be_written_is_named() {
    let dir = TempDir::new("certs").unwrap();
    write_config(&dir, &["Alpha"]);
    // A path under a file: no directory can be made there, whoever runs the test (root
    // ignores a directory's mode).
    dir.write("plain-file", "").unwrap();
    let run = certs(&dir, &["plain-file/tls"]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with("herd certs: cannot read plain-file/tls: "),
        "{}",
        run.stderr
    );

    // A directory that exists and refuses writing (unless the test runs as root).
    let locked = dir.path().join("locked");
    fs::create_dir(&locked).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o555)).unwrap();
    if fs::write(locked.join("probe"), "").is_ok() {
        herd_test_support::harness::report_skip(
            "a_dir_that_cannot_be_written_is_named (a read-only directory)",
            "this user writes into read-only directories (root)",
        );
        return;
    }
    let run = certs(&dir, &["locked"]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with("herd certs: cannot write locked/ca.key: "),
        "{}",
        run.stderr
    );
}

#[test]
fn certs_help_prints_its_own_usage() {
    let dir = TempDir::new("certs").unwrap();
    let run = run_herd(&["certs", "--help"], dir.path());
    assert_eq!(run.status.code(), Some(0), "{}", run.stderr);
    assert!(
        run.stdout.contains("herd certs CONFIG [DIR]"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("ca.key"), "{}", run.stdout);
    let run = run_herd(&["certs"], dir.path());
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    let run = run_herd(&["--help"], dir.path());
    assert!(
        run.stdout.contains("herd certs CONFIG [DIR]"),
        "{}",
        run.stdout
    );
}
