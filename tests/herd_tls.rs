//! Links over TLS (SPEC section 9, `peer tls DIR`): a herd whose certificates `herd certs`
//! made floods and resyncs as in clear, every link authenticated both ways; a neighbour with a
//! certificate from another authority, with another server's certificate, with an expired
//! one, or in clear, is refused with the reason in the log while the server serves its
//! clients; a handshake that stalls is dropped at `limit tls-handshake-ms`.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;

use herd_test_support::client::time_from_now;
use herd_test_support::cluster::Herd;
use herd_test_support::harness::{
    accepts, free_ports, wait_until, TempDir, LOG_TIMEOUT, SPEC_SERVERS,
};
use herd_test_support::metrics::{metrics_lines, sample, scrape};
use herd_test_support::run::run_herd;
use herd_test_support::server::Server;
use herd_test_support::wan::{LinkShape, Relay};

/// A herd of `names` linked by `links`, with `peer tls tls` and certificates `herd certs`
/// made in `tls`.
fn tls_herd(names: &[&str], links: &[(&str, &str)]) -> Herd {
    let mut herd = Herd::new(names, links);
    herd.make_certs("tls");
    herd.line("peer tls tls");
    herd
}

/// Checks that `server` answers an IAMAT (it kept serving whatever its links did).
#[track_caller]
fn serves_clients(herd: &Herd, server: &str) {
    let time = time_from_now(0);
    herd.iamat(server, "still-serving", "+34.068930-118.445127", &time);
}

#[test]
fn a_herd_over_tls_floods_and_resyncs_after_a_restart() {
    let mut herd = tls_herd(&SPEC_SERVERS, &herd_test_support::harness::SPEC_LINKS);
    herd.start_all();
    herd.wait_all_linked();
    for name in SPEC_SERVERS {
        let log = herd.log(name);
        assert!(
            log.contains("neighbour authenticated, TLSv1_3"),
            "{name}'s links are TLS 1.3:\n{log}"
        );
        assert!(
            log.contains("handshake done, TLSv1_3"),
            "{name} accepted TLS links:\n{log}"
        );
    }

    let time = time_from_now(0);
    let reply = herd.iamat("Bailey", "kiwi", "+34.068930-118.445127", &time);
    let expected = vec![("kiwi".to_string(), reply)];
    herd.wait_converged(&SPEC_SERVERS, &expected);

    // Jaquez goes down; an update made meanwhile reaches it by the resync when it is back.
    herd.kill("Jaquez");
    let time = time_from_now(0);
    let reply = herd.iamat("Clark", "lemon", "+1.0-2.0", &time);
    let mut expected = expected;
    expected.push(("lemon".to_string(), reply));
    herd.wait_converged(&["Bailey", "Bona", "Campbell", "Clark"], &expected);
    let handshakes_before = herd.count_in_log("Clark", "link tls Jaquez: neighbour authenticated");
    herd.start("Jaquez");
    herd.wait_link_syncs("Clark", "Jaquez", 2);
    herd.wait_knows("Jaquez", &expected);
    assert!(
        herd.count_in_log("Clark", "link tls Jaquez: neighbour authenticated") > handshakes_before,
        "the link came back over TLS"
    );
    // Nothing was refused on the way.
    for name in SPEC_SERVERS {
        assert_eq!(herd.count_in_log(name, "handshake failed"), 0, "{name}");
    }
}

#[test]
fn a_resync_of_many_records_crosses_a_tls_link_whole() {
    // Megabytes through TLS: the socket fills, rustls holds what it took, and writing goes on
    // as the neighbour reads.
    const CLIENTS: usize = 20_000;
    let mut herd = tls_herd(&["Alpha", "Beta"], &[("Alpha", "Beta")]);
    herd.start("Alpha");
    let mut client = herd.client("Alpha");
    let time = time_from_now(0);
    let mut batch = String::new();
    for i in 0..CLIENTS {
        batch += &format!("IAMAT resync-{i} +34.068930-118.445127 {time}\n");
    }
    client.send_raw(batch.as_bytes());
    let mut expected = Vec::new();
    for i in 0..CLIENTS {
        let reply = client.read_line();
        if i % 1000 == 999 {
            expected.push((format!("resync-{i}"), reply));
        }
    }
    herd.start("Beta");
    herd.wait_log_count(
        "Alpha",
        &format!("link sync Beta: sent {CLIENTS} records"),
        1,
    );
    herd.wait_knows("Beta", &expected);
    assert_eq!(herd.count_in_log("Alpha", "link down Beta: tls"), 0);
}

#[test]
fn a_tls_link_cut_or_silenced_comes_back_and_catches_up() {
    let mut herd = tls_herd(&["Alpha", "Beta"], &[("Alpha", "Beta")]);
    herd.line("peer ping-ms 100");
    let relay_to = |port: u16| {
        let listen = "127.0.0.1:0".parse().unwrap();
        Relay::start(
            listen,
            ([127, 0, 0, 1], port).into(),
            LinkShape::delay_ms(1),
        )
        .unwrap()
    };
    let to_beta = relay_to(herd.port("Beta"));
    let to_alpha = relay_to(herd.port("Alpha"));
    herd.route("Alpha", "Beta", to_beta.port());
    herd.route("Beta", "Alpha", to_alpha.port());
    herd.start_all();
    herd.wait_all_linked();

    // Cut: both links drop; an update made meanwhile arrives by the resync after the heal.
    to_beta.cut();
    to_alpha.cut();
    herd.wait_log_count("Alpha", "link down Beta", 1);
    let during_cut = herd.iamat("Alpha", "cut", "+1+1", &time_from_now(0));
    to_beta.heal();
    to_alpha.heal();
    herd.wait_link_syncs("Alpha", "Beta", 2);
    herd.wait_knows("Beta", &[("cut".to_string(), during_cut)]);

    // Silence: nothing crosses, so pings go unanswered and the link is taken down.
    to_beta.blackhole();
    herd.wait_log_count(
        "Alpha",
        "link down Beta: neighbour silent, no answer to pings",
        1,
    );
    let during_silence = herd.iamat("Alpha", "silence", "+2+2", &time_from_now(0));
    to_beta.heal();
    herd.wait_link_syncs("Alpha", "Beta", 3);
    herd.wait_knows("Beta", &[("silence".to_string(), during_silence)]);
    assert_eq!(herd.count_in_log("Alpha", "handshake failed"), 0);
    assert_eq!(herd.count_in_log("Beta", "handshake failed"), 0);
}

#[test]
fn sighup_reads_the_certificates_again_and_keeps_them_when_a_file_is_broken() {
    let mut herd = tls_herd(&["Alpha", "Beta"], &[("Alpha", "Beta")]);
    herd.start_all();
    herd.wait_all_linked();
    let tls = herd.dir().join("tls");
    let alpha_pem = tls.join("Alpha.pem");
    let downs = herd.count_in_log("Alpha", "link down");
    let first = presented_certificate(&herd, "Alpha", &tls, "Beta");
    assert_eq!(first, pem_der(&alpha_pem));

    // A broken file: the reload is refused and the certificate loaded stays.
    let good = std::fs::read(&alpha_pem).unwrap();
    std::fs::write(&alpha_pem, "not a certificate\n").unwrap();
    herd.signal("Alpha", "HUP");
    let log = herd.wait_log_count("Alpha", "reload refused: ", 1);
    assert!(
        log.contains("Alpha.pem holds no certificate; the certificates loaded stay"),
        "{log}"
    );
    std::fs::write(&alpha_pem, &good).unwrap();
    assert_eq!(presented_certificate(&herd, "Alpha", &tls, "Beta"), first);

    // A renewed certificate (herd certs makes a new one for the key there): new connections
    // get it; the links up stay up.
    std::fs::remove_file(&alpha_pem).unwrap();
    herd.make_certs("tls");
    let renewed = pem_der(&alpha_pem);
    assert_ne!(renewed, first);
    herd.signal("Alpha", "HUP");
    herd.wait_log_count("Alpha", "peer tls certificates read", 1);
    assert_eq!(presented_certificate(&herd, "Alpha", &tls, "Beta"), renewed);
    serves_clients(&herd, "Alpha");
    assert_eq!(herd.count_in_log("Alpha", "link down"), downs);
}

/// The DER of the first certificate in the PEM file at `path`.
fn pem_der(path: &Path) -> Vec<u8> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

/// The certificate `server` presents to a TLS client that has `client`'s certificate and key
/// in `dir` (a neighbour's link, as far as the handshake goes).
fn presented_certificate(herd: &Herd, server: &str, dir: &Path, client: &str) -> Vec<u8> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
    use std::sync::Arc;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_file(dir.join(format!("{client}.pem"))).unwrap()],
            PrivateKeyDer::from_pem_file(dir.join(format!("{client}.key"))).unwrap(),
        )
        .unwrap();
    let name = ServerName::try_from(server.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut socket = TcpStream::connect(("127.0.0.1", herd.port(server))).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut socket).unwrap();
    }
    conn.peer_certificates().unwrap()[0].to_vec()
}

#[test]
fn a_neighbour_from_another_authority_is_refused() {
    let mut herd = Herd::new(&["Alpha", "Beta"], &[("Alpha", "Beta")]);
    herd.make_certs("tls-alpha");
    herd.make_certs("tls-beta");
    herd.line_for("Alpha", "peer tls tls-alpha");
    herd.line_for("Beta", "peer tls tls-beta");
    let (lines, metrics) = metrics_lines(&["Alpha"]);
    herd.line(&lines[0]);
    herd.start_all();
    // Each side's link finds the other's certificate unknown, and each side's listener
    // refuses the other's client certificate.
    herd.wait_log_count(
        "Alpha",
        "link down Beta: tls handshake failed: unknown authority",
        1,
    );
    herd.wait_log_count(
        "Beta",
        "link down Alpha: tls handshake failed: unknown authority",
        1,
    );
    herd.wait_log_count("Alpha", "handshake failed: unknown authority", 2);
    serves_clients(&herd, "Alpha");
    serves_clients(&herd, "Beta");
    // The metrics count the refusals by reason, and show when each certificate expires (what
    // `herd certs` makes is valid for a year or more).
    let page = scrape(metrics[0]).unwrap();
    let refused = sample(
        &page,
        "herd_tls_handshakes_total",
        "result=\"unknown_authority\"",
    );
    assert!(refused >= Some(2.0), "{page}");
    assert_eq!(
        sample(&page, "herd_tls_handshakes_total", "result=\"ok\""),
        Some(0.0)
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for certificate in ["ca", "Alpha"] {
        let labels = format!("certificate=\"{certificate}\"");
        let expiry = sample(&page, "herd_tls_certificate_expiry_seconds", &labels).unwrap();
        assert!(expiry > now + 300.0 * 86_400.0, "{certificate}: {expiry}");
    }
    for name in ["Alpha", "Beta"] {
        assert_eq!(herd.count_in_log(name, "link up"), 0, "{name}");
        assert_eq!(herd.count_in_log(name, "is Alpha"), 0, "{name}");
        assert_eq!(herd.count_in_log(name, "is Beta"), 0, "{name}");
    }
}

#[test]
fn a_neighbour_with_another_servers_certificate_is_refused() {
    let mut herd = Herd::new(&["Alpha", "Beta", "Gamma"], &[("Alpha", "Beta")]);
    herd.make_certs("tls");
    // Beta's directory holds Gamma's certificate and key under Beta's names: a server of the
    // herd trying to pass for another.
    copy_dir(&herd.dir().join("tls"), &herd.dir().join("tls-beta"));
    for ext in ["pem", "key"] {
        std::fs::copy(
            herd.dir().join(format!("tls/Gamma.{ext}")),
            herd.dir().join(format!("tls-beta/Beta.{ext}")),
        )
        .unwrap();
    }
    herd.line_for("Alpha", "peer tls tls");
    herd.line_for("Beta", "peer tls tls-beta");
    herd.start("Alpha");
    herd.start("Beta");
    // Alpha's link expects Beta's name on the certificate it is shown.
    herd.wait_log_count(
        "Alpha",
        "link down Beta: tls handshake failed: wrong name",
        1,
    );
    // Beta's link to Alpha gets through TLS (its certificate is the herd's), but its hello
    // claims Beta while the certificate names Gamma.
    herd.wait_log_count(
        "Alpha",
        "hello refused: wrong name: the hello claims Beta",
        1,
    );
    serves_clients(&herd, "Alpha");
    assert_eq!(herd.count_in_log("Alpha", "is Beta"), 0);
    assert_eq!(herd.count_in_log("Beta", "link up"), 0);
}

#[test]
fn a_neighbour_in_clear_is_refused() {
    let mut herd = Herd::new(&["Alpha", "Beta"], &[("Alpha", "Beta")]);
    herd.make_certs("tls");
    herd.line_for("Alpha", "peer tls tls");
    herd.line("limit tls-handshake-ms 1000");
    herd.start_all();
    // Beta's hello arrives in clear.
    herd.wait_log_count(
        "Alpha",
        "hello refused: not TLS: Beta said its hello in clear",
        1,
    );
    // Alpha's handshake gets a plain line back (`? ` and the bytes up to a newline among
    // them), or nothing until its limit.
    wait_until("Alpha's link to Beta refused", LOG_TIMEOUT, || {
        let log = herd.log("Alpha");
        log.contains("link down Beta: tls handshake failed: not TLS")
            || log.contains("link down Beta: limit tls-handshake-ms")
    });
    serves_clients(&herd, "Alpha");
    assert_eq!(herd.count_in_log("Alpha", "is Beta"), 0);
    assert_eq!(herd.count_in_log("Alpha", "link up"), 0);
}

#[test]
fn a_stalled_handshake_is_dropped_at_the_limit() {
    let mut herd = Herd::new(&["Alpha", "Beta"], &[("Alpha", "Beta")]);
    herd.make_certs("tls");
    herd.line("peer tls tls");
    herd.line("limit tls-handshake-ms 300");
    // Beta is a socket that accepts (the kernel does) and never says anything.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    herd.route("Alpha", "Beta", silent.local_addr().unwrap().port());
    herd.start("Alpha");
    herd.wait_log_count(
        "Alpha",
        "link down Beta: limit tls-handshake-ms: the TLS handshake did not finish in 300 ms",
        1,
    );
    // A connection that starts a handshake and says no more.
    let mut stalled = TcpStream::connect(("127.0.0.1", herd.port("Alpha"))).unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).unwrap();
    herd.wait_log_count(
        "Alpha",
        "the TLS handshake did not finish in 300 ms, closing",
        1,
    );
    serves_clients(&herd, "Alpha");
    drop(silent);
}

#[test]
fn a_neighbour_with_an_expired_certificate_is_refused() {
    let mut herd = Herd::new(&["Alpha", "Beta"], &[("Alpha", "Beta")]);
    make_authority_with_expired(&herd.dir().join("tls"), "Alpha", "Beta");
    herd.line("peer tls tls");
    herd.start_all();
    herd.wait_log_count("Alpha", "link down Beta: tls handshake failed: expired", 1);
    herd.wait_log_count("Alpha", "handshake failed: expired", 2);
    serves_clients(&herd, "Alpha");
    assert_eq!(herd.count_in_log("Alpha", "is Beta"), 0);
    assert_eq!(herd.count_in_log("Alpha", "link up"), 0);
}

/// A CA in `dir` with a certificate for `valid` and one for `expired` that expired yesterday.
fn make_authority_with_expired(dir: &Path, valid: &str, expired: &str) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    use time::{Duration as Days, OffsetDateTime};
    std::fs::create_dir_all(dir).unwrap();
    let now = OffsetDateTime::now_utc();
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "test herd CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = now - Days::days(30);
    ca_params.not_after = now + Days::days(30);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    for (name, not_after) in [
        (valid, now + Days::days(30)),
        (expired, now - Days::days(1)),
    ] {
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = now - Days::days(30);
        params.not_after = not_after;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn links_in_clear_that_leave_the_machine_do_not_start() {
    // 192.0.2.0/24 is TEST-NET-1: the config is refused before any connection is tried, so
    // nothing is sent there.
    let dir = TempDir::new("tls-config").unwrap();
    let ports = free_ports(2).unwrap();
    let text = format!(
        "server Alpha {}\nserver Beta 192.0.2.7:{}\n# the link\nlink Alpha Beta\n",
        ports[0],
        ports[1].port()
    );
    dir.write("herd.conf", &text).unwrap();
    for args in [&["Alpha", "herd.conf"][..], &["--all", "herd.conf"]] {
        let run = run_herd(args, dir.path());
        let line = run.refusal();
        for words in [
            "herd.conf:4: link Alpha Beta reaches Beta at 192.0.2.7:",
            "run `herd certs CONFIG` and add `peer tls DIR`",
            "`peer tls off`",
        ] {
            assert!(line.contains(words), "{args:?}: {}", line);
        }
        assert!(!accepts(ports[0]), "no port opened");
    }
}

#[test]
fn peer_tls_off_keeps_links_in_clear_wherever_they_go() {
    // Beta listens on every interface (not loopback, so refused without `peer tls`); a
    // connection to 0.0.0.0 stays on this machine.
    let beta = free_ports(1).unwrap()[0].port();
    let server = Server::builder("Alpha")
        .line(&format!("server Beta 0.0.0.0:{beta}"))
        .line("link Alpha Beta")
        .line("peer tls off")
        .start();
    server.wait_for_log("link connecting Beta 0.0.0.0:");
    let mut client = server.client();
    let reply = client.iamat("kiwi", "+1+2", &time_from_now(0));
    assert!(reply.starts_with("AT Alpha "), "{reply}");
}

#[test]
fn peer_tls_without_its_files_does_not_start() {
    let dir = TempDir::new("tls-files").unwrap();
    let ports = free_ports(2).unwrap();
    let text = format!(
        "server Alpha {}\nserver Beta {}\nlink Alpha Beta\npeer tls certs\n",
        ports[0], ports[1]
    );
    dir.write("herd.conf", &text).unwrap();
    let run = run_herd(&["Alpha", "herd.conf"], dir.path());
    let line = run.refusal();
    assert!(
        line.starts_with("herd.conf: peer tls: cannot read certs/ca.pem")
            && line.contains("(make it with `herd certs CONFIG certs`)"),
        "{}",
        line
    );
    assert!(!accepts(ports[0]), "no port opened");
}
