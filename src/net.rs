//! The only code that makes socket calls: listen, accept, connect, read, write. Each call is
//! nonblocking and its outcome is turned into a small enum the event loop matches on, with
//! `EINTR` retried here so no caller has to. A connection with TLS (`peer tls`) moves its
//! bytes through its [`TlsStream`] here too, as rustls's mio example does: encrypted bytes
//! in with `read_tls` and `process_new_packets`, plaintext out of `reader()`, plaintext into
//! `writer()` and encrypted bytes out with `write_tls`.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use mio::net::{TcpListener, TcpStream};
use mio::Interest;

use crate::buffer::OutBuffer;
use crate::tls::{TlsFailure, TlsStream};

/// A stream and the interest it is registered with, so the loop reregisters only when the
/// interest its owner wants has changed; with `peer tls`, its TLS state.
#[derive(Debug)]
pub struct Socket {
    pub stream: TcpStream,
    pub registered: Interest,
    pub tls: Option<Box<TlsStream>>,
}

/// The interest a connection needs: what its owner wants (`wanted`), and writability while
/// its TLS has encrypted bytes the socket has not taken (a handshake message, an alert).
pub fn interest_with_tls(wanted: Interest, tls: Option<&TlsStream>) -> Interest {
    match tls {
        Some(tls) if tls.wants_write() => wanted | Interest::WRITABLE,
        _ => wanted,
    }
}

pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Accepts one pending connection, if any. Replies are small and latency matters, so Nagle's
/// algorithm is turned off on every accepted socket.
pub fn accept(listener: &TcpListener) -> io::Result<Option<(TcpStream, SocketAddr)>> {
    loop {
        match listener.accept() {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                // Loopback autotuning would let every client's kernel buffer grow to 4 MiB of
                // replies it has not read: 2,000 clients that never read then hold gigabytes
                // of kernel memory and slow the whole machine. Replies are lines; this is
                // plenty for a client that reads.
                let _ = set_buffer(&stream, libc::SO_SNDBUF, CLIENT_SEND_BUFFER_BYTES);
                // The same the other way: the kernel would let a client that pipelines faster
                // than it is served park up to `tcp_rmem`'s maximum (32 MiB on some machines)
                // of commands in this server's memory. The server reads a client only as fast
                // as it answers it (`limit in-flight`, `limit output-soft-bytes`), so what
                // waits beyond this stays in the client's own kernel.
                let _ = set_buffer(&stream, libc::SO_RCVBUF, CLIENT_RECEIVE_BUFFER_BYTES);
                return Ok(Some((stream, addr)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The kernel send buffer of an accepted connection (see [`accept`]).
pub const CLIENT_SEND_BUFFER_BYTES: usize = 128 * 1024;
/// The kernel receive buffer of an accepted connection (see [`accept`]); a neighbour's
/// connection gets [`LINK_SOCKET_BUFFER_BYTES`] once it said hello.
pub const CLIENT_RECEIVE_BUFFER_BYTES: usize = 64 * 1024;

/// Raises the soft open-file limit to the hard one (a server holds a descriptor per
/// connection, and the usual soft default of 1,024 is far below `limit connections`); returns
/// the soft limit in force.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct passed, nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Ok(limit.rlim_cur)
}

/// Whether an accept failed for want of descriptors (the connection stays in the backlog).
pub fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE)
    )
}

/// The kernel buffer of a link's socket to a neighbour on this machine, on each side. Loopback
/// autotuning grows them to megabytes (`tcp_rmem` allows 32 MiB), and every byte waiting in
/// one is an update the neighbour has not applied yet while this server counts it as sent:
/// small buffers keep what a link has in flight to a few milliseconds of records, so `peer
/// max-owed` measures what the neighbour really lacks. Loopback needs little: its round trip
/// is tens of microseconds.
pub const LINK_SOCKET_BUFFER_BYTES: usize = 64 * 1024;

/// Whether a link's socket buffers are set to [`LINK_SOCKET_BUFFER_BYTES`]: only when the
/// neighbour is on this machine. Across machines TCP must keep a round trip of records in
/// flight, and a 64 KiB window would cap a link at 64 KiB per round trip (about 1 MB/s at
/// 60 ms), so there the kernel sizes the buffers to the path, as it does for any connection;
/// what waits unsent stays bounded by [`LINK_UNSENT_BYTES`] either way.
pub fn pins_link_buffers(neighbour: SocketAddr) -> bool {
    neighbour.ip().is_loopback()
}

/// What a link's socket may hold that TCP has not sent yet (`TCP_NOTSENT_LOWAT`): past it the
/// socket takes nothing more and is not writable. Bytes TCP has sent but the neighbour has not
/// acknowledged are in flight on the path and must be; bytes not yet sent only wait, and while
/// they wait in the kernel they are lines, no longer records: a newer update of the same client
/// cannot replace them. Kept small, what a thin link cannot carry yet stays owed, one record
/// per client, so the far side gets each client's newest record sooner.
pub const LINK_UNSENT_BYTES: usize = 16 * 1024;

/// Starts a nonblocking connect for a link; completion is reported as writability (see
/// [`connect_finished`]).
pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    let _ = stream.set_nodelay(true);
    if pins_link_buffers(addr) {
        let _ = set_buffer(&stream, libc::SO_SNDBUF, LINK_SOCKET_BUFFER_BYTES);
    }
    let _ = set_option(
        &stream,
        libc::IPPROTO_TCP,
        libc::TCP_NOTSENT_LOWAT,
        LINK_UNSENT_BYTES,
    );
    Ok(stream)
}

/// The kernel receive buffer of a link from a neighbour on another machine: room for a round
/// trip of records on a wide path (4 MiB per round trip: 67 MB/s at 60 ms). An accepted
/// connection's buffer was set when it was accepted (a client's), which turns the kernel's
/// autotuning off for good, so the size is set again rather than left to the kernel; memory
/// is taken only for what is waiting.
pub const LINK_FAR_RECEIVE_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// An accepted connection turned out to be a neighbour's link: from a neighbour on this
/// machine, bound what it may queue toward us, as the sending side bounds its own buffer;
/// from across machines, make room for the path's round trip ([`pins_link_buffers`]).
pub fn size_link_receive_buffer(stream: &TcpStream) -> io::Result<()> {
    match stream.peer_addr() {
        Ok(peer) if pins_link_buffers(peer) => {
            set_buffer(stream, libc::SO_RCVBUF, LINK_SOCKET_BUFFER_BYTES)
        }
        Ok(_) => set_buffer(stream, libc::SO_RCVBUF, LINK_FAR_RECEIVE_BUFFER_BYTES),
        Err(e) => Err(e),
    }
}

fn set_buffer(stream: &TcpStream, option: libc::c_int, bytes: usize) -> io::Result<()> {
    set_option(stream, libc::SOL_SOCKET, option, bytes)
}

fn set_option(
    stream: &TcpStream,
    level: libc::c_int,
    option: libc::c_int,
    bytes: usize,
) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is open for the life of `stream`, and the option value is a
    // c_int whose size is passed along with its address.
    let status = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            level,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// After a writable event on a connecting socket: `Ok(true)` once connected, `Ok(false)` while
/// still in progress, `Err` when the connect failed (as mio's `TcpStream::connect` documents).
pub fn connect_finished(stream: &TcpStream) -> io::Result<bool> {
    if let Some(error) = stream.take_error()? {
        return Err(error);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

/// What one read came to.
#[derive(Debug)]
pub enum ReadOutcome {
    Data(usize),
    /// Nothing more for now (mio is edge-triggered: wait for the next event).
    WouldBlock,
    /// The other side closed its sending half.
    Eof,
    Failed(io::Error),
    /// The TLS handshake or session failed (the alert, if any, was sent).
    TlsFailed(TlsFailure),
}

/// Reads what is there: plaintext through `tls` when the connection has it. Like a plain read,
/// fewer bytes than `buf` holds means the socket is empty for now.
pub fn read_some(
    stream: &mut TcpStream,
    tls: Option<&mut TlsStream>,
    buf: &mut [u8],
) -> ReadOutcome {
    match tls {
        Some(tls) => read_tls_some(stream, tls, buf),
        None => read_plain(stream, buf),
    }
}

/// The first byte waiting on an accepted connection, left in the socket (`Ok(None)`: none
/// yet), to tell a TLS handshake from a client's line.
pub fn peek_first_byte(stream: &TcpStream) -> io::Result<Option<u8>> {
    let mut byte = [0u8; 1];
    loop {
        match stream.peek(&mut byte) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(byte[0])),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Plaintext from a TLS connection, filling `buf` as far as the socket allows: only a read
/// that emptied the socket (it met `WouldBlock`, or came back short) returns less than `buf`
/// holds (the callers rely on that, as on a plain read, to know a new edge will come).
/// Handshake messages the engine has to answer are written at once.
fn read_tls_some(stream: &mut TcpStream, tls: &mut TlsStream, buf: &mut [u8]) -> ReadOutcome {
    let mut filled = 0;
    let mut socket_empty = false;
    loop {
        let session = tls.session();
        while filled < buf.len() {
            match session.reader().read(&mut buf[filled..]) {
                Ok(0) => return data_or(filled, ReadOutcome::Eof), // close_notify
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // The socket closed without close_notify: an end all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return data_or(filled, ReadOutcome::Eof)
                }
                Err(e) => return data_or(filled, ReadOutcome::Failed(e)),
            }
        }
        if filled == buf.len() {
            return ReadOutcome::Data(filled);
        }
        if socket_empty {
            return data_or(filled, ReadOutcome::WouldBlock);
        }
        let mut socket = ShortReadSeen {
            stream: &mut *stream,
            short: false,
        };
        let read = session.read_tls(&mut socket);
        socket_empty = socket.short;
        match read {
            Ok(0) => {
                // The end: what was decrypted before it is read first (the next turn of the
                // loop), then the reader says how it ended.
                if let Err(e) = session.process_new_packets() {
                    return failed(stream, tls, &e);
                }
                match session.reader().read(&mut buf[filled..]) {
                    Ok(n) if n > 0 => filled += n,
                    _ => return data_or(filled, ReadOutcome::Eof),
                }
            }
            Ok(_) => {
                if let Err(e) = session.process_new_packets() {
                    return failed(stream, tls, &e);
                }
                if let Err(e) = flush_tls(stream, tls) {
                    return data_or(filled, ReadOutcome::Failed(e));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return data_or(filled, ReadOutcome::WouldBlock)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return data_or(filled, ReadOutcome::Failed(e)),
        }
    }
}

/// The socket as rustls reads it, noting a read that came back with fewer bytes than asked
/// for: the socket is empty then, and one more read only to hear `WouldBlock` would be a
/// system call per command for nothing (readiness is edge-triggered: the next bytes bring a
/// new event, as after a short plain read).
struct ShortReadSeen<'a> {
    stream: &'a mut TcpStream,
    short: bool,
}

impl Read for ShortReadSeen<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.read(buf)?;
        self.short = n > 0 && n < buf.len();
        Ok(n)
    }
}

/// The plaintext read so far if there is some (the outcome comes with the next read),
/// otherwise the outcome.
fn data_or(filled: usize, outcome: ReadOutcome) -> ReadOutcome {
    if filled > 0 {
        ReadOutcome::Data(filled)
    } else {
        outcome
    }
}

/// The TLS engine refused what it read: its alert goes out if the socket takes it, and the
/// connection is over.
/// What was read before the failure is dropped with the connection.
fn failed(stream: &mut TcpStream, tls: &mut TlsStream, error: &rustls::Error) -> ReadOutcome {
    let _ = flush_tls(stream, tls);
    ReadOutcome::TlsFailed(TlsFailure::from(error))
}

/// Writes the engine's encrypted bytes until it has none or the socket is full.
fn flush_tls(stream: &mut TcpStream, tls: &mut TlsStream) -> io::Result<()> {
    let session = tls.session();
    while session.wants_write() {
        match session.write_tls(stream) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn read_plain(stream: &mut TcpStream, buf: &mut [u8]) -> ReadOutcome {
    loop {
        match stream.read(buf) {
            Ok(0) => return ReadOutcome::Eof,
            Ok(n) => return ReadOutcome::Data(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return ReadOutcome::Failed(e),
        }
    }
}

/// Writes as much of `out` as the socket takes now; returns how many bytes it took. Output
/// left in `out` afterwards means the socket is full (wait for `WRITABLE`). `Err` means the
/// connection is broken. With `tls`, `out` is plaintext: it goes into the engine only once
/// the engine's encrypted bytes are all written, so what waits beyond the socket is at most
/// one record's worth (and before the handshake is done, what rustls keeps until it is).
pub fn write_pending(
    stream: &mut TcpStream,
    tls: Option<&mut TlsStream>,
    out: &mut OutBuffer,
) -> io::Result<usize> {
    let Some(tls) = tls else {
        return write_plain(stream, out);
    };
    let mut taken = 0;
    loop {
        flush_tls(stream, tls)?;
        if out.is_empty() || tls.wants_write() {
            return Ok(taken);
        }
        match tls.session().writer().write(out.pending()) {
            Ok(0) => return Ok(taken), // held until the handshake is done
            Ok(n) => {
                out.consume(n);
                taken += n;
            }
            Err(e) => return Err(e),
        }
    }
}

fn write_plain(stream: &mut TcpStream, out: &mut OutBuffer) -> io::Result<usize> {
    let mut written = 0;
    while !out.is_empty() {
        match stream.write(out.pending()) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                out.consume(n);
                written += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_links_within_the_machine_get_small_buffers() {
        assert!(pins_link_buffers("127.0.0.1:12000".parse().unwrap()));
        assert!(pins_link_buffers("127.0.0.3:12000".parse().unwrap()));
        assert!(pins_link_buffers("[::1]:12000".parse().unwrap()));
        assert!(!pins_link_buffers("10.0.0.2:12000".parse().unwrap()));
        assert!(!pins_link_buffers("[2001:db8::2]:12000".parse().unwrap()));
    }
}
