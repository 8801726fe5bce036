//! Bad configs (SPEC sections 1 and 4, README "Config reference"): one stderr line
//! `FILE:LINE: problem` naming the right line, exit status 2, no port opened.

use herd_test_support::{
    fake_places::FakePlaces,
    harness::{accepts, free_ports, TempDir},
    run::run_herd,
    server::Server,
};

/// Writes `body` (with `{PORT}` replaced by a free port) as `herd.conf`, runs
/// `herd Alpha herd.conf`, and checks the one error line names `herd.conf:LINE:` and contains
/// every word of `mentions`.
fn expect_config_error(body: &str, line: usize, mentions: &[&str]) {
    expect_config_error_bytes(body.as_bytes(), line, mentions);
}

/// [`expect_config_error`] for any bytes (`{PORT}` replaced the same way); also checks that
/// stderr is printable ASCII lines: no byte of the file reaches the terminal unescaped.
/// Returns the error line.
fn expect_config_error_bytes(body: &[u8], line: usize, mentions: &[&str]) -> String {
    let dir = TempDir::new("config").unwrap();
    let addr = free_ports(1).unwrap()[0];
    let shown = String::from_utf8_lossy(body).into_owned();
    let body = replace_bytes(body, b"{PORT}", addr.port().to_string().as_bytes());
    std::fs::write(dir.path().join("herd.conf"), &body).unwrap();
    let run = run_herd(&["Alpha", "herd.conf"], dir.path());
    assert_eq!(
        run.status.code(),
        Some(2),
        "exit status 2 for config:\n{shown}\nstderr: {:?}",
        run.stderr
    );
    assert!(
        run.stderr
            .chars()
            .all(|c| c == '\n' || (' '..='~').contains(&c)),
        "stderr is printable ASCII: {:?}",
        run.stderr
    );
    let lines = run.stderr_lines();
    assert_eq!(
        lines.len(),
        1,
        "exactly one stderr line for config:\n{shown}\ngot {:?}",
        run.stderr
    );
    let expected = format!("herd.conf:{line}:");
    assert!(
        lines[0].contains(&expected),
        "error names {expected:?}: {:?} (config:\n{shown})",
        lines[0]
    );
    for word in mentions {
        assert!(
            lines[0].contains(word),
            "error mentions {word:?}: {:?}",
            lines[0]
        );
    }
    assert!(!accepts(addr), "no port opened");
    lines[0].to_string()
}

fn replace_bytes(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while !rest.is_empty() {
        if rest.starts_with(needle) {
            out.extend_from_slice(with);
            rest = &rest[needle.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

#[test]
fn a_file_that_is_not_utf8_names_the_line_of_the_first_bad_byte() {
    let line = expect_config_error_bytes(
        b"# herd\nserver Alpha 127.0.0.1:{PORT}\nlink Alpha caf\xff\n\xfe\n",
        3,
        &["not UTF-8", "0xff", "caf\\xff"],
    );
    assert_eq!(
        line,
        "herd.conf:3: not UTF-8 text (byte 0xff) in 'caf\\xff'"
    );
    // Latin-1 in a comment, after CRLF lines: still the file is refused, at that line.
    expect_config_error_bytes(
        b"server Alpha 127.0.0.1:{PORT}\r\n\r\n# caf\xe9 au lait\r\n",
        3,
        &["not UTF-8", "0xe9"],
    );
}

#[test]
fn control_bytes_from_the_file_are_escaped_in_the_message() {
    let line = expect_config_error_bytes(
        b"server Alpha 127.0.0.1:{PORT}\nlnk\x1b[2J Alpha Beta\n",
        2,
        &["lnk\\x1b[2J"],
    );
    assert_eq!(line, "herd.conf:2: unknown directive 'lnk\\x1b[2J'");
    expect_config_error_bytes(
        "server Alpha 127.0.0.1:{PORT}\nplaces api n\u{e9}w\x07\x7f\n".as_bytes(),
        2,
        &["'n\\xc3\\xa9w\\x07\\x7f'"],
    );
}

#[test]
fn names_from_the_file_are_escaped_when_the_server_is_not_there() {
    let dir = TempDir::new("config").unwrap();
    let addr = free_ports(1).unwrap()[0];
    dir.write("herd.conf", &format!("server Al\x1b[2Jpha {addr}\n"))
        .unwrap();
    let run = run_herd(&["Alpha", "herd.conf"], dir.path());
    assert_eq!(run.status.code(), Some(2), "stderr: {:?}", run.stderr);
    assert!(!run.stderr.contains('\x1b'), "no raw ESC: {:?}", run.stderr);
    assert!(
        run.stderr.contains("(servers: Al\\x1b[2Jpha)"),
        "{:?}",
        run.stderr
    );
}

#[test]
fn unknown_directive_names_its_line() {
    expect_config_error(
        "# herd\nserver Alpha 127.0.0.1:{PORT}\n\nlnk Alpha Beta\n",
        4,
        &["lnk"],
    );
}

#[test]
fn server_line_without_address_is_malformed() {
    expect_config_error("server Alpha 127.0.0.1:{PORT}\nserver Beta\n", 2, &[]);
}

#[test]
fn server_line_with_bad_address_is_malformed() {
    expect_config_error(
        "server Alpha 127.0.0.1:{PORT}\nserver Beta not-an-address\n",
        2,
        &[],
    );
}

#[test]
fn server_line_with_extra_field_is_malformed() {
    expect_config_error(
        "server Alpha 127.0.0.1:{PORT}\nserver Beta 127.0.0.1:1 extra\n",
        2,
        &[],
    );
}

#[test]
fn link_to_unknown_server_names_the_server() {
    expect_config_error(
        "server Alpha 127.0.0.1:{PORT}\n# a comment\n   \nlink Alpha Nowhere\n",
        4,
        &["Nowhere"],
    );
}

#[test]
fn duplicate_server_names_the_second_line() {
    expect_config_error(
        "server Alpha 127.0.0.1:{PORT}\nserver Beta 127.0.0.1:1\nserver Alpha 127.0.0.1:2\n",
        3,
        &["Alpha"],
    );
}

#[test]
fn bad_number_names_its_line() {
    expect_config_error(
        "server Alpha 127.0.0.1:{PORT}\nplaces workers many\n",
        2,
        &["many"],
    );
    expect_config_error(
        "server Alpha 127.0.0.1:{PORT}\nlimit line-bytes -5\n",
        2,
        &[],
    );
}

#[test]
fn bad_keyword_values_name_their_line() {
    expect_config_error(
        "server Alpha 127.0.0.1:{PORT}\nplaces api sideways\n",
        2,
        &[],
    );
    expect_config_error("server Alpha 127.0.0.1:{PORT}\nlog lines maybe\n", 2, &[]);
    expect_config_error(
        "server Alpha 127.0.0.1:{PORT}\nplaces frobnicate 3\n",
        2,
        &[],
    );
}

#[test]
fn error_after_comments_and_blank_lines_counts_every_line() {
    expect_config_error(
        "# first\n\n   # indented comment\nserver Alpha 127.0.0.1:{PORT}   # trailing comment\n\n\nlog lines sometimes\n",
        7,
        &[],
    );
}

#[test]
fn all_with_a_bad_config_exits_2_too() {
    let dir = TempDir::new("config").unwrap();
    let addr = free_ports(1).unwrap()[0];
    dir.write(
        "herd.conf",
        &format!("server Alpha {addr}\nlnk Alpha Beta\n"),
    )
    .unwrap();
    let run = run_herd(&["--all", "herd.conf"], dir.path());
    let line = run.refusal();
    assert!(line.contains("herd.conf:2:"), "names the line: {:?}", line);
    assert!(!accepts(addr), "no port opened");
}

#[test]
fn comments_blank_lines_and_every_documented_directive_are_accepted() {
    let fake = FakePlaces::start();
    let server = Server::builder("Alpha")
        .places(&fake)
        .line("   # an indented comment")
        .line("")
        .line("server Beta 127.0.0.1:1   # another server, never started, no link")
        .line("places field-mask places.displayName,places.id")
        .line("places workers 2")
        .line("places timeout-ms 4000")
        .line("places queue 10")
        .line("log lines on")
        .line("log level info")
        .line("limit line-bytes 1000")
        .line("limit output-bytes 100000")
        .line("limit connections 100")
        .line("peer backoff-min-ms 50")
        .line("peer backoff-max-ms 1000")
        .line("peer max-owed 1000")
        .line("peer stall-ms 3000")
        .line("limit future-seconds 3600")
        .start();
    let reply = server.client().iamat("c1", "+1+2", "100");
    assert!(reply.starts_with("AT Alpha "), "{reply:?}");
}
