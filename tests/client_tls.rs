//! Clients over TLS (SPEC section 9, `tls NAME IP:PORT CERT KEY`): the same protocol as in
//! clear, through a rustls client of the test's own and through `openssl s_client` where it is
//! installed; the handshake has a deadline; SIGHUP reads the certificate and key again; a
//! certificate that cannot be read stops the server before it opens a port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};

use herd_test_support::client::time_from_now;
use herd_test_support::harness::{accepts, free_ports, program_or_skip, TempDir};
use herd_test_support::run::run_herd;
use herd_test_support::server::Server;

/// The name the test's certificates are for.
const HOST: &str = "herd.test";

/// A CA (`ca.pem`) and a certificate for [`HOST`] signed by it (`NAME.pem`, `NAME.key`) in
/// `dir`, as a public CA would give a server.
fn make_certificate(dir: &Path, name: &str) {
    let ca_pem = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key");
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "test clients CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_key = if ca_key_path.exists() {
        KeyPair::from_pem(&std::fs::read_to_string(&ca_key_path).unwrap()).unwrap()
    } else {
        let key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&key).unwrap();
        std::fs::write(&ca_pem, ca.pem()).unwrap();
        std::fs::write(&ca_key_path, key.serialize_pem()).unwrap();
        key
    };
    let issuer = Issuer::new(ca_params, ca_key);
    let params = CertificateParams::new(vec![HOST.to_string()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

/// A server Alpha with `tls Alpha 127.0.0.1:PORT` and the certificate made in `certs`.
fn tls_server(certs: &Path, extra: &[&str]) -> (Server, u16) {
    let port = free_ports(1).unwrap()[0].port();
    let mut builder = Server::builder("Alpha").line(&format!(
        "tls Alpha 127.0.0.1:{port} {} {}",
        certs.join("server.pem").display(),
        certs.join("server.key").display()
    ));
    for line in extra {
        builder = builder.line(line);
    }
    let server = builder.start();
    server.wait_for_log(&format!("listen 127.0.0.1:{port} for TLS clients"));
    (server, port)
}

/// A TLS client to `port` trusting `ca.pem` of `certs`.
fn connect(certs: &Path, port: u16) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(certs.join("ca.pem")).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(HOST).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    rustls::StreamOwned::new(conn, socket)
}

fn read_line(stream: &mut impl Read) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

#[test]
fn a_client_over_tls_gets_at_and_whatsat_replies() {
    let certs = TempDir::new("client-tls").unwrap();
    make_certificate(certs.path(), "server");
    let (server, port) = tls_server(certs.path(), &[]);

    let mut tls = connect(certs.path(), port);
    let time = time_from_now(0);
    writeln!(tls, "IAMAT kiwi +34.068930-118.445127 {time}").unwrap();
    let at = read_line(&mut tls);
    assert!(at.starts_with("AT Alpha "), "{at}");
    assert!(
        at.ends_with(&format!(" kiwi +34.068930-118.445127 {time}")),
        "{at}"
    );
    writeln!(tls, "WHATSAT kiwi 10 5").unwrap();
    assert_eq!(
        read_line(&mut tls),
        at,
        "the WHATSAT reply starts with the AT line"
    );
    // Then the JSON (an error here: the Places URL is a closed port) and a blank line.
    let mut json = String::new();
    loop {
        let line = read_line(&mut tls);
        if line.is_empty() {
            break;
        }
        json += &line;
    }
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(json.get("error").is_some(), "{json}");
    assert_eq!(
        tls.conn.peer_certificates().unwrap()[0].to_vec(),
        pem_der(&certs.path().join("server.pem"))
    );
    // The same table behind both ports.
    let mut plain = server.client();
    let reply = plain.request("WHATSAT kiwi 10 5");
    assert_eq!(reply, at);
    server.wait_for_log("over TLS");
    server.wait_for_log("handshake done");
}

#[test]
fn openssl_s_client_speaks_to_the_tls_port() {
    let Some(openssl) = program_or_skip("openssl", "apt-get install openssl") else {
        return;
    };
    let certs = TempDir::new("client-tls").unwrap();
    make_certificate(certs.path(), "server");
    let (_server, port) = tls_server(certs.path(), &[]);
    let mut child = Command::new(openssl)
        .args([
            "s_client",
            "-quiet",
            "-verify_return_error",
            "-servername",
            HOST,
        ])
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-CAfile")
        .arg(certs.path().join("ca.pem"))
        .arg("-verify_hostname")
        .arg(HOST)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let time = time_from_now(0);
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "IAMAT lemon +1+2 {time}").unwrap();
    let stdout = child.stdout.take().unwrap();
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = sender.send(line);
    });
    let line = lines.recv_timeout(Duration::from_secs(10));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("openssl s_client printed the reply");
    assert!(line.starts_with("AT Alpha "), "{line}");
    assert!(
        line.trim_end().ends_with(&format!(" lemon +1+2 {time}")),
        "{line}"
    );
}

#[test]
fn a_tls_client_that_stalls_its_handshake_is_dropped_at_the_limit() {
    let certs = TempDir::new("client-tls").unwrap();
    make_certificate(certs.path(), "server");
    let (server, port) = tls_server(certs.path(), &["limit tls-handshake-ms 300"]);
    let _silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    server.wait_for_log("the TLS handshake did not finish in 300 ms, closing");
    // Plain bytes on the TLS port are not TLS.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).unwrap();
    plain.write_all(b"IAMAT kiwi +1+1 1\n").unwrap();
    server.wait_for_log("handshake failed: not TLS");
    let mut client = server.client();
    assert!(client
        .request(&format!("IAMAT kiwi +1+1 {}", time_from_now(0)))
        .starts_with("AT Alpha "));
}

#[test]
fn sighup_reads_the_tls_certificate_again() {
    let certs = TempDir::new("client-tls").unwrap();
    make_certificate(certs.path(), "server");
    let first = pem_der(&certs.path().join("server.pem"));
    let (server, port) = tls_server(certs.path(), &[]);
    let mut tls = connect(certs.path(), port);
    writeln!(tls, "IAMAT kiwi +1+1 {}", time_from_now(0)).unwrap();
    read_line(&mut tls);
    assert_eq!(tls.conn.peer_certificates().unwrap()[0].to_vec(), first);

    // A broken key: refused, the certificate loaded stays.
    let key = certs.path().join("server.key");
    let good_key = std::fs::read(&key).unwrap();
    std::fs::write(&key, "no key here\n").unwrap();
    server.signal("HUP");
    server.wait_for_log("the certificate loaded stays");
    std::fs::write(&key, good_key).unwrap();

    make_certificate(certs.path(), "server");
    let renewed = pem_der(&certs.path().join("server.pem"));
    assert_ne!(renewed, first);
    server.signal("HUP");
    server.wait_for_log("tls certificate read");
    let mut tls = connect(certs.path(), port);
    writeln!(tls, "IAMAT kiwi +1+1 {}", time_from_now(0)).unwrap();
    assert!(read_line(&mut tls).starts_with("AT Alpha "));
    assert_eq!(tls.conn.peer_certificates().unwrap()[0].to_vec(), renewed);
}

#[test]
fn a_tls_line_without_its_files_does_not_start() {
    let dir = TempDir::new("client-tls").unwrap();
    let ports = free_ports(2).unwrap();
    let text = format!(
        "server Alpha {}\ntls Alpha {} server.pem server.key\n",
        ports[0], ports[1]
    );
    dir.write("herd.conf", &text).unwrap();
    let run = run_herd(&["Alpha", "herd.conf"], dir.path());
    let line = run.refusal();
    assert!(
        line.starts_with("herd.conf: tls: cannot read server.pem"),
        "{}",
        line
    );
    assert!(!accepts(ports[0]) && !accepts(ports[1]), "no port opened");
}

fn pem_der(path: &PathBuf) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}
