//! Command-line arguments -> [`Invocation`]. Pure: it reads the arguments it is given.

use std::ffi::OsString;
use std::path::PathBuf;

use log::LevelFilter;

use crate::config::parse_level;

pub const USAGE: &str = "\
herd: one server of a herd of location servers

usage:
  herd NAME CONFIG        serve as the server NAME of CONFIG (e.g. herd Campbell herd.conf)
  herd --all CONFIG       start every server of CONFIG, each as its own process;
                          Ctrl-C or SIGTERM stops them all
  herd --all --restart CONFIG
                          the same, and a server that dies is started again (after 1 s,
                          then twice as long each time, at most 30 s)
  herd status CONFIG      one table of every server of CONFIG, read from their metrics
                          addresses; exit status 0 when every server and link is up
  herd certs CONFIG [DIR]
                          keys and certificates for a herd across machines (see
                          herd certs --help)
  herd --help | --version

options:
  --log-level LEVEL       off, error, warn, info, debug or trace (overrides 'log level')
  --watch                 with status: redraw the table every second until Ctrl-C

'herd --all --help' and 'herd status --help' say more about each.
";

/// `herd --all --help`.
pub const ALL_USAGE: &str = "\
herd --all: every server of a herd, each as its own process, from one terminal

usage:
  herd --all CONFIG [--restart] [--log-level LEVEL]

Starts 'herd NAME CONFIG' for every server line of CONFIG, shows each one's stderr behind its
name (a line every server says as it starts is said once, behind 'herd: all N servers:'), and
says 'herd: started N servers' once every one is listening. A server that cannot start stops
the others: what became of each server is said once, and the exit status is 1.

options:
  --restart               start a server that dies again (after 1 s, then twice as long each
                          time, at most 30 s)
  --log-level LEVEL       off, error, warn, info, debug or trace, for every server (overrides
                          'log level')

signals:
  Ctrl-C, SIGTERM         stop every server (SIGKILL to any still running 5 s later), say each
                          one that stopped, then 'herd: stopped N servers'
  SIGHUP                  passed on: each server reloads CONFIG and says how it went, one line
                          each
";

/// `herd status --help`.
pub const STATUS_USAGE: &str = "\
herd status: one table of every server of a herd, read from their metrics addresses

usage:
  herd status CONFIG [--watch]

Reads the metrics page of every server of CONFIG twice, a second apart, and prints one line
per server: its state, uptime, clients, connections, IAMATs and WHATSATs per second, links up,
records owed, and Places latency and errors. The exit status is 0 when every server answered
and every link is up, 1 otherwise, and 2 for a config it cannot use.

options:
  --watch                 redraw the table every second until Ctrl-C
";

/// `herd certs --help`.
pub const CERTS_USAGE: &str = "\
herd certs: keys and certificates for a herd across machines

usage:
  herd certs CONFIG [DIR]

Makes in DIR (default: tls beside CONFIG) a certificate authority for the herd, ca.pem and
ca.key, and for every server of CONFIG a key and a certificate signed by it that names the
server, NAME.key and NAME.pem. Keys are ECDSA P-256 and readable by their owner only. The
authority is valid for 10 years, a server's certificate for 1 year.

It never overwrites a file: run it again after adding a server, and only that server's files
are made. To renew a certificate, move its .pem away and run it again: it makes a new one for
the same key.

Each server's machine needs its own NAME.pem and NAME.key, and ca.pem. ca.key signs new
certificates: keep it off the servers. (Links do not use these files yet.)
";

/// The one line said when `--all` comes without its config file.
const ALL_NEEDS_CONFIG: &str =
    "--all needs a config file: herd --all CONFIG [--restart] [--log-level LEVEL] \
     (see herd --all --help)";

#[derive(Debug, PartialEq)]
pub enum Invocation {
    Serve {
        name: String,
        config: PathBuf,
        log_level: Option<LevelFilter>,
    },
    All {
        config: PathBuf,
        log_level: Option<LevelFilter>,
        /// `--restart`: start a server that died again.
        restart: bool,
    },
    Status {
        config: PathBuf,
        watch: bool,
    },
    /// `--help`: the text to print, for the command it came with.
    /// `herd certs CONFIG [DIR]`: the herd's TLS files, in DIR or `tls` beside CONFIG.
    Certs {
        config: PathBuf,
        dir: Option<PathBuf>,
    },
    Help(&'static str),
    Version,
}

/// Parses the arguments after the program name. The error is one line for stderr.
pub fn parse_args(args: Vec<OsString>) -> Result<Invocation, String> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        return Ok(Invocation::Help(help_for(&args)));
    }
    if args.first().is_some_and(|a| a == "certs") {
        return parse_certs(&args[1..]);
    }
    let mut args = pico_args::Arguments::from_vec(args);
    if args.contains(["-V", "--version"]) {
        return Ok(Invocation::Version);
    }
    let watch = args.contains("--watch");
    let restart = args.contains("--restart");
    let log_level = args
        .opt_value_from_fn("--log-level", parse_level)
        .map_err(|e| e.to_string())?;
    let all: Option<PathBuf> =
        match args.opt_value_from_os_str("--all", |s| Ok::<_, String>(PathBuf::from(s))) {
            Err(pico_args::Error::OptionWithoutAValue(_)) => return Err(ALL_NEEDS_CONFIG.into()),
            // `herd --all --frobnicate`: an option where the config file should be.
            Ok(Some(path)) if path.as_os_str().as_encoded_bytes().starts_with(b"-") => {
                return Err(ALL_NEEDS_CONFIG.into())
            }
            other => other.map_err(|e| e.to_string())?,
        };
    let rest: Vec<String> = args
        .finish()
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if let Some(flag) = rest.iter().find(|a| a.starts_with('-')) {
        return Err(format!("unknown option '{flag}' (see herd --help)"));
    }
    if restart && all.is_none() {
        return Err("--restart goes with 'herd --all CONFIG' (see herd --help)".into());
    }
    if watch && !matches!(rest.first().map(String::as_str), Some("status")) {
        return Err("--watch goes with 'herd status CONFIG' (see herd --help)".into());
    }
    match (all, rest.as_slice()) {
        (None, [command, config]) if command == "status" => Ok(Invocation::Status {
            config: PathBuf::from(config),
            watch,
        }),
        (None, [command, ..]) if command == "status" => {
            Err("expected 'herd status CONFIG [--watch]' (see herd status --help)".into())
        }
        (Some(config), []) => Ok(Invocation::All {
            config,
            log_level,
            restart,
        }),
        (Some(_), _) => Err("--all takes only a config file (see herd --help)".into()),
        (None, [name, config]) => Ok(Invocation::Serve {
            name: name.clone(),
            config: PathBuf::from(config),
            log_level,
        }),
        (None, _) => {
            Err("expected NAME and CONFIG, e.g. 'herd Campbell herd.conf' (see herd --help)".into())
        }
    }
}

/// The help for the command `--help` came with: `herd --all --help`, `herd status --help`, or
/// the general one.
fn help_for(args: &[OsString]) -> &'static str {
    if args.first().is_some_and(|a| a == "certs") {
        CERTS_USAGE
    } else if args.iter().any(|a| a == "--all") {
        ALL_USAGE
    } else if args.first().is_some_and(|a| a == "status") {
        STATUS_USAGE
    } else {
        USAGE
    }
}

/// The arguments after `herd certs`.
fn parse_certs(args: &[OsString]) -> Result<Invocation, String> {
    if let Some(flag) = args.iter().find(|a| a.as_encoded_bytes().starts_with(b"-")) {
        let flag = flag.to_string_lossy();
        return Err(format!("unknown option '{flag}' (see herd certs --help)"));
    }
    match args {
        [config] => Ok(Invocation::Certs {
            config: PathBuf::from(config),
            dir: None,
        }),
        [config, dir] => Ok(Invocation::Certs {
            config: PathBuf::from(config),
            dir: Some(PathBuf::from(dir)),
        }),
        _ => Err("expected 'herd certs CONFIG [DIR]' (see herd certs --help)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Invocation, String> {
        parse_args(args.iter().map(OsString::from).collect())
    }

    #[test]
    fn serve() {
        assert_eq!(
            parse(&["Campbell", "herd.conf"]),
            Ok(Invocation::Serve {
                name: "Campbell".into(),
                config: "herd.conf".into(),
                log_level: None
            })
        );
    }

    #[test]
    fn all_with_a_level() {
        assert_eq!(
            parse(&["--log-level", "debug", "--all", "herd.conf"]),
            Ok(Invocation::All {
                config: "herd.conf".into(),
                log_level: Some(LevelFilter::Debug),
                restart: false,
            })
        );
    }

    #[test]
    fn all_with_restart() {
        assert_eq!(
            parse(&["--all", "herd.conf", "--restart"]),
            Ok(Invocation::All {
                config: "herd.conf".into(),
                log_level: None,
                restart: true,
            })
        );
        assert!(parse(&["--restart", "Campbell", "herd.conf"]).is_err());
    }

    #[test]
    fn status_with_and_without_watch() {
        assert_eq!(
            parse(&["status", "herd.conf"]),
            Ok(Invocation::Status {
                config: "herd.conf".into(),
                watch: false
            })
        );
        assert_eq!(
            parse(&["status", "--watch", "herd.conf"]),
            Ok(Invocation::Status {
                config: "herd.conf".into(),
                watch: true
            })
        );
        assert!(parse(&["status"]).is_err());
        assert!(parse(&["status", "a", "b"]).is_err());
        assert!(parse(&["--watch", "Campbell", "herd.conf"]).is_err());
    }

    #[test]
    fn certs_with_and_without_a_dir() {
        assert_eq!(
            parse(&["certs", "herd.conf"]),
            Ok(Invocation::Certs {
                config: "herd.conf".into(),
                dir: None
            })
        );
        assert_eq!(
            parse(&["certs", "herd.conf", "/etc/herd/tls"]),
            Ok(Invocation::Certs {
                config: "herd.conf".into(),
                dir: Some("/etc/herd/tls".into())
            })
        );
        assert_eq!(
            parse(&["certs", "--help"]),
            Ok(Invocation::Help(CERTS_USAGE))
        );
        assert_eq!(
            parse(&["certs", "herd.conf", "-h"]),
            Ok(Invocation::Help(CERTS_USAGE))
        );
        assert!(parse(&["certs"]).is_err());
        assert!(parse(&["certs", "a", "b", "c"]).is_err());
        assert!(parse(&["certs", "--watch", "herd.conf"]).is_err());
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse(&["--help"]), Ok(Invocation::Help(USAGE)));
        assert_eq!(parse(&["-V"]), Ok(Invocation::Version));
    }

    #[test]
    fn help_of_a_command_is_its_own() {
        assert_eq!(
            parse(&["status", "--help"]),
            Ok(Invocation::Help(STATUS_USAGE))
        );
        assert_eq!(parse(&["status", "-h"]), Ok(Invocation::Help(STATUS_USAGE)));
        assert_eq!(parse(&["--all", "--help"]), Ok(Invocation::Help(ALL_USAGE)));
        assert_eq!(
            parse(&["--all", "herd.conf", "--help"]),
            Ok(Invocation::Help(ALL_USAGE))
        );
    }

    #[test]
    fn all_without_a_config_says_how_to_give_one() {
        for args in [
            &["--all"][..],
            &["--all", "--restart"],
            &["--log-level", "debug", "--all"],
            &["--all", "--frobnicate"],
        ] {
            assert_eq!(parse(args), Err(ALL_NEEDS_CONFIG.to_string()), "{args:?}");
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["Campbell"]).is_err());
        assert!(parse(&["a", "b", "c"]).is_err());
        assert!(parse(&["--all"]).is_err());
        assert!(parse(&["--all", "x", "y"]).is_err());
        assert!(parse(&["--frobnicate", "a", "b"]).is_err());
        assert!(parse(&["--log-level", "loud", "a", "b"]).is_err());
    }
}
