//! Limits (SPEC section 2 on long lines, README "Config reference" and "Behaviour the SPEC
//! leaves open"): `limit line-bytes`, `limit connections`, `limit output-bytes`.

use herd_test_support::{
    checks::check_at_line,
    client::Client,
    fake_places::FakePlaces,
    harness::{program_or_skip, wait_until},
    server::Server,
};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An IAMAT line of exactly `len` bytes (without its terminator), by padding the client id.
fn iamat_of_len(len: usize) -> (String, String) {
    let fixed = "IAMAT ".len() + " +1+2 100".len();
    let id = "c".repeat(len - fixed);
    let line = format!("IAMAT {id} +1+2 100");
    assert_eq!(line.len(), len);
    (line, id)
}

#[test]
fn line_longer_than_the_limit_is_cut_and_the_connection_stays_open() {
    let server = Server::builder("Alpha")
        .line("limit line-bytes 100")
        .start();
    let mut client = server.client();
    // The discarded tail holds a valid command: it must not be run.
    let line = format!("HELLO{}IAMAT c9 +1+2 100{}", "a".repeat(95), "b".repeat(50));
    client.send(&line);
    assert_eq!(client.read_line(), format!("? {}", &line[..100]));
    let reply = client.iamat("c1", "+1+2", "100");
    check_at_line(&reply, "Alpha", "c1", "+1+2", "100");
    let log = server.wait_for_log("limit line-bytes");
    assert!(
        log.contains("limit line-bytes conn="),
        "README log record:\n{log}"
    );
}

#[test]
fn line_of_exactly_the_limit_is_processed() {
    let server = Server::builder("Alpha")
        .line("limit line-bytes 100")
        .start();
    let mut client = server.client();
    let (line, id) = iamat_of_len(100);
    client.send(&line);
    check_at_line(&client.read_line(), "Alpha", &id, "+1+2", "100");
    // The \r of \r\n does not count either.
    client.send_raw(format!("{line}\r\n").as_bytes());
    check_at_line(&client.read_line(), "Alpha", &id, "+1+2", "100");
    let (line, _) = iamat_of_len(101);
    client.send(&line);
    assert_eq!(client.read_line(), format!("? {}", &line[..100]));
    let reply = client.iamat("c1", "+1+2", "100");
    check_at_line(&reply, "Alpha", "c1", "+1+2", "100");
}

#[test]
fn long_line_sent_in_pieces_is_cut_once() {
    let server = Server::builder("Alpha")
        .line("limit line-bytes 100")
        .start();
    let mut client = server.client();
    let line = "x".repeat(250);
    for piece in [&line[..60], &line[60..160], &line[160..]] {
        client.send_raw(piece.as_bytes());
    }
    client.send_raw(b"\r\n");
    client.send("IAMAT c1 +1+2 100");
    assert_eq!(client.read_line(), format!("? {}", &line[..100]));
    check_at_line(&client.read_line(), "Alpha", "c1", "+1+2", "100");
}

#[test]
fn default_limit_is_64_kib() {
    let server = Server::builder("Alpha").line("log lines off").start();
    let mut client = server.client();
    let (line, id) = iamat_of_len(65536);
    client.send(&line);
    check_at_line(&client.read_line(), "Alpha", &id, "+1+2", "100");
    let (line, _) = iamat_of_len(65537);
    client.send(&line);
    assert_eq!(client.read_line(), format!("? {}", &line[..65536]));
    let reply = client.iamat("c1", "+1+2", "100");
    check_at_line(&reply, "Alpha", "c1", "+1+2", "100");
}

/// What a read on a connection the server closed at once returns: EOF (or a reset).
fn expect_closed_by_server(stream: &mut TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Ok(n) => panic!(
            "expected the server to close, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => panic!("expected the server to close, got {e}"),
    }
}

#[test]
fn connections_past_the_limit_are_closed() {
    let server = Server::builder("Alpha").line("limit connections 3").start();
    // The start-up probe must be gone before counting.
    server.wait_for_log("close conn=");
    let mut clients: Vec<Client> = (0..3).map(|_| server.client()).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        let id = format!("c{i}");
        check_at_line(
            &client.iamat(&id, "+1+2", "100"),
            "Alpha",
            &id,
            "+1+2",
            "100",
        );
    }
    let mut fourth = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    let fourth_port = fourth.local_addr().expect("addr").port();
    expect_closed_by_server(&mut fourth);
    let log = server.wait_for_log("limit connections");
    let record = format!("limit connections: 3 open, refusing 127.0.0.1:{fourth_port}");
    assert!(
        log.contains(&record),
        "README log record {record:?}:\n{log}"
    );

    // Closing one makes room again.
    drop(clients.remove(0));
    let room = "room for a new connection after closing one";
    wait_until(room, Duration::from_secs(5), || {
        let mut stream = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = stream.write_all(b"IAMAT again +1+2 100\n");
        let mut text = String::new();
        let _ = BufReader::new(stream).read_line(&mut text);
        if text.starts_with("AT Alpha ") {
            Ok(())
        } else {
            Err(format!("got {text:?}"))
        }
    });
    for client in &mut clients {
        check_at_line(
            &client.iamat("c9", "+1+2", "100"),
            "Alpha",
            "c9",
            "+1+2",
            "100",
        );
    }
}

#[test]
fn many_connections_at_once_are_all_served() {
    let server = Server::builder("Alpha").line("log lines off").start();
    let mut clients: Vec<Client> = (0..200).map(|_| server.client()).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client.send(&format!("IAMAT many-{i} +1+2 100"));
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let id = format!("many-{i}");
        check_at_line(&client.read_line(), "Alpha", &id, "+1+2", "100");
    }
}

#[test]
fn client_that_never_reads_is_dropped_past_output_bytes() {
    let server = Server::builder("Alpha")
        .line("limit output-bytes 10000")
        .line("log lines off")
        .start();
    let client = server.client();
    let mut writer = client.stream().try_clone().expect("clone");
    writer
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let line = format!("IAMAT {} +1+2 100\n", "w".repeat(1000));
    // Written on its own thread so the test cannot deadlock on a full socket (a write that
    // blocks for the write timeout fails).
    let writing = std::thread::spawn(move || {
        for sent in 0..20_000 {
            if let Err(e) = writer.write_all(line.as_bytes()) {
                return (sent, Some(e.kind()));
            }
        }
        (20_000, None)
    });
    wait_until(
        "the log to say `limit output-bytes`",
        Duration::from_secs(20),
        || {
            let log = server.log_text();
            if log.contains("limit output-bytes") {
                Ok(())
            } else {
                Err(log)
            }
        },
    );
    let (sent, error) = writing.join().expect("writer thread");
    assert!(
        matches!(error, Some(ErrorKind::BrokenPipe) | Some(ErrorKind::ConnectionReset)),
        "the server dropped the connection while we were still sending: after {sent} lines, {error:?}"
    );
    let log = server.log_text();
    assert!(
        log.contains("limit output-bytes conn="),
        "README log record:\n{log}"
    );
    // Others are still served.
    let reply = server.client().iamat("c1", "+1+2", "100");
    check_at_line(&reply, "Alpha", "c1", "+1+2", "100");
}

#[test]
fn client_that_reads_is_not_dropped_however_much_it_gets() {
    let server = Server::builder("Alpha")
        .line("limit output-bytes 10000")
        .line("log lines off")
        .start();
    let mut client = server.client();
    let id = "r".repeat(1000);
    for _ in 0..100 {
        check_at_line(
            &client.iamat(&id, "+1+2", "100"),
            "Alpha",
            &id,
            "+1+2",
            "100",
        );
    }
}

/// Where `prlimit` (which starts a server at a low open-file limit) comes from.
const UTIL_LINUX: &str = "Debian: apt-get install util-linux";

/// At a low open-file limit, `limit connections` is lowered to what fits (logged), and the
/// connections past it are refused at once while those within it are served.
#[test]
fn limit_connections_is_lowered_to_what_the_open_file_limit_allows() {
    if program_or_skip("prlimit", UTIL_LINUX).is_none() {
        return;
    }
    let server = Server::builder("Alpha").open_files(64).start();
    let log = server.wait_for_log("limit connections: 16384 lowered to 48");
    assert!(log.contains("open-file limit of 64"), "{log}");
    server.wait_for_log("close conn=1 "); // the harness's port check
    let mut served: Vec<Client> = Vec::new();
    for n in 0..48 {
        let mut client = server.client();
        let reply = client.iamat(&format!("c{n}"), "+1+2", "100");
        check_at_line(&reply, "Alpha", &format!("c{n}"), "+1+2", "100");
        served.push(client);
    }
    let mut refused = server.client();
    refused.expect_eof(); // closed at once, before it says anything
    server.wait_for_log("limit connections: 48 open, refusing");
    // Once one closes, a new client is served.
    drop(served.pop());
    server.wait_for_log("close conn=49 ");
    let reply = server.client().iamat("again", "+1+2", "100");
    check_at_line(&reply, "Alpha", "again", "+1+2", "100");
}

/// Out of descriptors (README "Open files"): with Places calls holding sockets, accepts fail
/// with EMFILE and the new connections wait in the kernel's backlog, where epoll raises no new
/// edge for them; the server retries on a timer, so once other connections close, every one
/// of them is accepted and served, without a new connection arriving to wake it.
#[test]
fn connections_left_in_the_backlog_by_emfile_are_served_once_others_close() {
    if program_or_skip("prlimit", UTIL_LINUX).is_none() {
        return;
    }
    let places = FakePlaces::start();
    places.set_delay(Duration::from_secs(4));
    let server = Server::builder("Alpha")
        .places(&places)
        .open_files(64)
        .start();
    server.wait_for_log("limit connections: 16384 lowered to 48");
    // 30 clients, then a lookup of its own from each: a socket each to Places, as many as
    // the descriptors left allow (a call that finds none fails, and says so).
    let mut holding: Vec<Client> = Vec::new();
    for n in 0..30 {
        let mut client = server.client();
        client.iamat(&format!("h{n}"), &format!("+{n}+1"), "100");
        holding.push(client);
    }
    for (n, client) in holding.iter_mut().enumerate() {
        client.send(&format!("WHATSAT h{n} 10 5"));
    }
    assert!(
        places.wait_for_requests(20, Duration::from_secs(10)),
        "Places calls started: {}",
        places.request_count()
    );
    // More clients than descriptors are left: the kernel completes their handshakes, the
    // server cannot accept them all.
    let mut waiting: Vec<Client> = (0..15).map(|_| server.client()).collect();
    for (n, client) in waiting.iter_mut().enumerate() {
        client.send(&format!("IAMAT w{n} +1+2 100"));
    }
    server.wait_for_log("accept failed: Too many open files");
    // Others close; nothing new connects.
    drop(holding);
    for (n, client) in waiting.iter_mut().enumerate() {
        let reply = client.read_line();
        check_at_line(&reply, "Alpha", &format!("w{n}"), "+1+2", "100");
    }
    let log = server.log_text();
    assert!(log.contains("retrying every 50 ms"), "{log}");
}
