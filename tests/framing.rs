//! Lines and fields (SPEC section 2): `\n` framing with `\r` dropped, the six white-space
//! bytes, blank lines, U+00A0 inside a field, non-UTF-8 bytes, several commands per
//! connection, commands split across writes.

use herd_test_support::{checks::check_at_line, server::Server};
use std::time::{Duration, Instant};

fn server() -> Server {
    Server::builder("Alpha").start()
}

#[test]
fn tabs_multiple_spaces_and_leading_trailing_white_space_separate_fields() {
    let server = server();
    let mut client = server.client();
    for line in [
        "IAMAT\tc1\t+1+2\t100",
        "IAMAT    c1   +1+2      100",
        "   IAMAT c1 +1+2 100",
        "IAMAT c1 +1+2 100   ",
        " \t IAMAT \t c1\t \t+1+2 \t100\t \t",
    ] {
        client.send(line);
        let reply = client.read_line();
        check_at_line(&reply, "Alpha", "c1", "+1+2", "100");
    }
}

#[test]
fn form_feed_vertical_tab_and_lone_cr_separate_fields() {
    let server = server();
    let mut client = server.client();
    for line in [
        &b"IAMAT\x0cc1\x0b+1+2\x0c\x0b100\n"[..],
        b"\x0b\x0cIAMAT c1 +1+2 100\x0c\x0b\n",
        b"IAMAT\rc1\r+1+2\r100\n",
        b"IAMAT \r c1 +1+2 100\r\r\n",
    ] {
        client.send_raw(line);
        let reply = client.read_line();
        check_at_line(&reply, "Alpha", "c1", "+1+2", "100");
    }
}

#[test]
fn crlf_from_telnet_is_a_line_end() {
    let server = server();
    let mut client = server.client();
    client.send_raw(b"IAMAT c1 +1+2 100\r\n");
    let reply = client.read_line();
    check_at_line(&reply, "Alpha", "c1", "+1+2", "100");
    client.send_raw(b"HELLO there\r\n");
    assert_eq!(
        client.read_line(),
        "? HELLO there",
        "the \\r is not part of the line"
    );
}

#[test]
fn blank_and_white_space_only_lines_get_no_reply() {
    let server = server();
    let mut client = server.client();
    // If any blank line were answered, that answer would arrive before the AT line.
    client.send_raw(b"\n\r\n   \n\t\x0b\x0c \r\n");
    client.send("IAMAT c1 +1+2 100");
    let reply = client.read_line();
    check_at_line(&reply, "Alpha", "c1", "+1+2", "100");
    client.send_raw(b"\n");
    client.send("HELLO");
    assert_eq!(client.read_line(), "? HELLO");
}

#[test]
fn no_break_space_belongs_to_the_field() {
    let server = server();
    let mut client = server.client();
    let reply = client.iamat("a\u{a0}b", "+1+2", "100");
    check_at_line(&reply, "Alpha", "a\u{a0}b", "+1+2", "100");
    // A no-break space does not separate the command from its first field.
    client.send("IAMAT\u{a0}c1 +1+2 100");
    assert_eq!(client.read_line(), "? IAMAT\u{a0}c1 +1+2 100");
    client.send("IAMAT c1 +1+2\u{a0}100");
    assert_eq!(client.read_line(), "? IAMAT c1 +1+2\u{a0}100");
}

#[test]
fn several_commands_in_one_write_are_answered_in_order() {
    let server = server();
    let mut client = server.client();
    client.send_raw(b"IAMAT c1 +1+2 100\nHELLO\nIAMAT c2 +3+4 200\r\nIAMAT c3 +5+6 300\n");
    check_at_line(&client.read_line(), "Alpha", "c1", "+1+2", "100");
    assert_eq!(client.read_line(), "? HELLO");
    check_at_line(&client.read_line(), "Alpha", "c2", "+3+4", "200");
    check_at_line(&client.read_line(), "Alpha", "c3", "+5+6", "300");
}

#[test]
fn many_commands_on_one_connection() {
    let server = server();
    let mut client = server.client();
    for i in 0..200 {
        let id = format!("client-{i}");
        let reply = client.iamat(&id, "+1+2", "100");
        check_at_line(&reply, "Alpha", &id, "+1+2", "100");
    }
}

#[test]
fn a_command_split_across_writes_is_one_line() {
    let server = server();
    let mut client = server.client();
    client.stream().set_nodelay(true).expect("nodelay");
    for piece in [&b"IAM"[..], b"AT c1 +1", b"+2 10", b"0\r"] {
        client.send_raw(piece);
        assert!(
            client.is_quiet_until(Instant::now() + Duration::from_millis(50)),
            "no reply before the line is complete"
        );
    }
    client.send_raw(b"\n");
    check_at_line(&client.read_line(), "Alpha", "c1", "+1+2", "100");
}

#[test]
fn non_utf8_client_id_is_echoed_byte_for_byte() {
    let server = server();
    let mut client = server.client();
    client.send_raw(b"IAMAT cl\xff\xfe\x80id +1+2 100\n");
    let reply = client.read_line_bytes();
    assert!(
        reply.starts_with(b"AT Alpha +"),
        "accepted: {:?}",
        String::from_utf8_lossy(&reply)
    );
    assert!(
        reply.ends_with(b" cl\xff\xfe\x80id +1+2 100"),
        "client id echoed byte for byte: {reply:?}"
    );
    client.send_raw(b"HELLO \xff\xc3(\n");
    assert_eq!(client.read_line_bytes(), b"? HELLO \xff\xc3(");
}

#[test]
fn invalid_lines_are_echoed_as_received_with_leading_and_trailing_white_space() {
    let server = server();
    let mut client = server.client();
    client.send_raw(b"  \tFOO bar\t \r\n");
    assert_eq!(
        client.read_line(),
        "?   \tFOO bar\t ",
        "only the \\r\\n is removed"
    );
    client.send_raw(b"\x0bFOO\x0c\n");
    assert_eq!(client.read_line_bytes(), b"? \x0bFOO\x0c");
    // Only one \r is part of the terminator.
    client.send_raw(b"FOO\r\r\n");
    assert_eq!(client.read_line_bytes(), b"? FOO\r");
}

/// SPEC section 2: what `printf 'IAMAT ...' | nc -N` sends — no final newline, then a
/// half-close — is one last line, and is answered before the server closes.
#[test]
fn the_bytes_after_the_last_newline_are_a_last_line_at_half_close() {
    let server = server();
    let mut client = server.client();
    client.send_raw(b"IAMAT c1 +1+2 100\nIAMAT c2 +3+4 200\r");
    client.shutdown_write();
    check_at_line(&client.read_line(), "Alpha", "c1", "+1+2", "100");
    check_at_line(&client.read_line(), "Alpha", "c2", "+3+4", "200");
    client.expect_eof();
}

#[test]
fn an_unterminated_invalid_last_line_is_answered_and_a_blank_one_is_not() {
    let server = server();
    let mut client = server.client();
    client.send_raw(b"HELLO there");
    client.shutdown_write();
    assert_eq!(client.read_line(), "? HELLO there");
    client.expect_eof();

    let mut client = server.client();
    client.send_raw(b"IAMAT c1 +1+2 100\n \t ");
    client.shutdown_write();
    check_at_line(&client.read_line(), "Alpha", "c1", "+1+2", "100");
    client.expect_eof();
}
