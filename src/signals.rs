//! The signals a server and `herd --all` answer (README "Signals"): SIGTERM and SIGINT stop,
//! SIGHUP reopens the log (a supervisor passes it on to its servers), SIGUSR1 and SIGUSR2 are
//! ignored. This only sets up how they arrive; what they do is the event loop's and the
//! supervisor's business.

use std::io;
use std::os::fd::OwnedFd;

use mio::net::UnixStream;
use signal_hook::consts::{SIGUSR1, SIGUSR2};

/// A pipe that each of `signals` writes a byte to when it arrives (signal-hook's self-pipe:
/// the handler only writes); the read end, for the event loop to register. Several arrivals
/// before the loop reads may leave several bytes: the loop drains them and acts once.
pub fn pipe(signals: &[libc::c_int]) -> io::Result<UnixStream> {
    let (reader, writer) = UnixStream::pair()?;
    let writer = std::os::unix::net::UnixStream::from(OwnedFd::from(writer));
    for &signal in signals {
        signal_hook::low_level::pipe::register(signal, writer.try_clone()?)?;
    }
    Ok(reader)
}

/// SIGUSR1 and SIGUSR2 kill a process by default; a server and a supervisor ignore them, so a
/// stray `kill -USR1` (or a tool that sends it to ask for a log reopen) does no harm.
pub fn ignore_user_signals() -> io::Result<()> {
    for signal in [SIGUSR1, SIGUSR2] {
        // SAFETY: SIG_IGN installs no handler, so no code of ours runs in signal context;
        // signal(2) only changes the disposition of this one signal.
        if unsafe { libc::signal(signal, libc::SIG_IGN) } == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
