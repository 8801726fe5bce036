//! The command line (SPEC section 1, README "On a fresh machine"): `--help`, `--version`,
//! `herd NAME CONFIG` with an unknown name, and `herd --all CONFIG`.

use herd_test_support::{
    client::{time_from_now, Client},
    harness::{accepts, free_ports, refused_places_url, wait_until, TempDir, KEY_ENV},
    run::run_herd,
    server::Server,
};
use std::net::SocketAddr;
use std::time::Duration;

#[test]
fn help_prints_usage_on_stdout_and_exits_0() {
    let dir = TempDir::new("cli").unwrap();
    let run = run_herd(&["--help"], dir.path());
    assert_eq!(run.status.code(), Some(0), "stderr: {}", run.stderr);
    assert!(
        run.stdout.contains("herd"),
        "usage names the program: {:?}",
        run.stdout
    );
    assert!(
        run.stdout.to_lowercase().contains("config"),
        "usage mentions the CONFIG argument: {:?}",
        run.stdout
    );
    assert!(
        run.stdout.contains("--all"),
        "usage mentions --all: {:?}",
        run.stdout
    );
}

#[test]
fn version_prints_the_package_version_and_exits_0() {
    let dir = TempDir::new("cli").unwrap();
    let run = run_herd(&["--version"], dir.path());
    assert_eq!(run.status.code(), Some(0), "stderr: {}", run.stderr);
    assert!(
        run.stdout.contains(env!("CARGO_PKG_VERSION")),
        "--version prints {}: {:?}",
        env!("CARGO_PKG_VERSION"),
        run.stdout
    );
}

#[test]
fn no_arguments_is_a_usage_error() {
    let dir = TempDir::new("cli").unwrap();
    let run = run_herd(&[], dir.path());
    assert_eq!(
        run.status.code(),
        Some(2),
        "stdout {:?} stderr {:?}",
        run.stdout,
        run.stderr
    );
    assert!(
        !run.stderr.trim().is_empty(),
        "says what is wrong on stderr"
    );
}

#[test]
fn unknown_server_name_exits_2_with_one_line_naming_config_and_name() {
    let dir = TempDir::new("cli").unwrap();
    let addr = free_ports(1).unwrap()[0];
    dir.write(
        "herd.conf",
        &format!("server Alpha {addr}\nlog dir {}\n", dir.path().display()),
    )
    .unwrap();
    let run = run_herd(&["Nobody", "herd.conf"], dir.path());
    let line = run.refusal();
    assert!(
        line.contains("herd.conf"),
        "names the config file: {:?}",
        line
    );
    assert!(
        line.contains("Nobody"),
        "names the unknown server: {:?}",
        line
    );
    assert!(!accepts(addr), "no port opened");
}

#[test]
fn missing_config_file_exits_2_naming_the_file() {
    let dir = TempDir::new("cli").unwrap();
    let run = run_herd(&["Alpha", "no-such-herd.conf"], dir.path());
    let line = run.refusal();
    assert!(
        line.contains("no-such-herd.conf"),
        "names the file: {:?}",
        line
    );
}

fn two_server_config(dir: &TempDir, alpha: SocketAddr, beta: SocketAddr) -> String {
    format!(
        "server Alpha {alpha}\nserver Beta {beta}\n{}\nplaces key-env {KEY_ENV}\nlog dir {}\n",
        refused_places_url().unwrap(),
        dir.path().display()
    )
}

#[test]
fn all_runs_every_server_and_sigterm_stops_them_all() {
    let dir = TempDir::new("cli").unwrap();
    let [alpha, beta] = free_ports(2).unwrap()[..] else {
        unreachable!()
    };
    let config = two_server_config(&dir, alpha, beta);
    let mut supervisor = Server::start_all(dir, &config, vec![alpha.port(), beta.port()]);

    let time = time_from_now(0);
    let reply = Client::connect(alpha.port()).iamat("c1", "+1+2", &time);
    assert!(
        reply.starts_with("AT Alpha "),
        "Alpha answers as Alpha: {reply:?}"
    );
    let reply = Client::connect(beta.port()).iamat("c1", "+1+2", &time);
    assert!(
        reply.starts_with("AT Beta "),
        "Beta answers as Beta: {reply:?}"
    );

    supervisor.terminate();
    assert!(
        supervisor.wait_exit(Duration::from_secs(10)).is_some(),
        "the supervisor exits after SIGTERM"
    );
    wait_until(
        "both servers to stop listening after SIGTERM to the supervisor",
        Duration::from_secs(10),
        || match (accepts(alpha), accepts(beta)) {
            (false, false) => Ok(()),
            (alpha_open, beta_open) => {
                Err(format!("alpha open: {alpha_open}, beta open: {beta_open}"))
            }
        },
    );
}

#[test]
fn all_prefixes_each_servers_stderr_with_its_name() {
    let dir = TempDir::new("cli").unwrap();
    let [alpha, beta] = free_ports(2).unwrap()[..] else {
        unreachable!()
    };
    let config = two_server_config(&dir, alpha, beta);
    let supervisor = Server::start_all(dir, &config, vec![alpha.port(), beta.port()]);
    let stderr = supervisor.wait_for_stderr("herd: started 2 servers", Duration::from_secs(10));
    for (name, addr) in [("Alpha", alpha), ("Beta", beta)] {
        let line = format!("{name}: {name} listening on {addr}, log ");
        assert!(
            stderr.lines().any(|l| l.starts_with(&line)),
            "{name}'s own line is prefixed with its name: {line:?} in:\n{stderr}"
        );
    }
}

#[test]
fn all_without_a_config_says_how_to_give_one() {
    let dir = TempDir::new("cli").unwrap();
    for args in [&["--all"][..], &["--all", "--restart"]] {
        let run = run_herd(args, dir.path());
        assert_eq!(run.status.code(), Some(2), "{args:?}: {:?}", run.stderr);
        assert_eq!(
            run.stderr_lines(),
            ["herd: --all needs a config file: herd --all CONFIG [--restart] [--log-level LEVEL] \
              (see herd --all --help)"],
            "{args:?}: one line with the usage of --all"
        );
        assert!(run.stdout.is_empty(), "{args:?}: {:?}", run.stdout);
    }
}

#[test]
fn status_help_and_all_help_are_their_own() {
    let dir = TempDir::new("cli").unwrap();
    let general = run_herd(&["--help"], dir.path());
    for (args, usage) in [
        (&["status", "--help"][..], "herd status CONFIG [--watch]"),
        (
            &["--all", "--help"],
            "herd --all CONFIG [--restart] [--log-level LEVEL]",
        ),
    ] {
        let run = run_herd(args, dir.path());
        assert_eq!(run.status.code(), Some(0), "{args:?}: {:?}", run.stderr);
        assert!(run.stderr.is_empty(), "{args:?}: {:?}", run.stderr);
        assert!(
            run.stdout.contains(usage),
            "{args:?} shows {usage:?}: {:?}",
            run.stdout
        );
        assert_ne!(run.stdout, general.stdout, "{args:?}: not the general help");
        assert!(
            !run.stdout.contains("herd NAME CONFIG "),
            "{args:?}: about the command only: {:?}",
            run.stdout
        );
    }
}

#[test]
fn sigterm_stops_a_single_server() {
    let mut server = Server::builder("Alpha").start();
    let addr = ([127, 0, 0, 1], server.port).into();
    server.terminate();
    assert!(
        server.wait_exit(Duration::from_secs(10)).is_some(),
        "the server exits after SIGTERM"
    );
    assert!(!accepts(addr), "its port is closed");
}

#[test]
fn a_configured_peer_secret_that_is_not_set_stops_the_server_before_it_listens() {
    let dir = TempDir::new("cli").unwrap();
    let addr = free_ports(1).unwrap()[0];
    dir.write(
        "herd.conf",
        &format!(
            "server Alpha {addr}\npeer secret-env HERD_TEST_SECRET_NEVER_SET\nlog dir {}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let run = run_herd(&["Alpha", "herd.conf"], dir.path());
    assert_eq!(run.status.code(), Some(1), "stderr: {:?}", run.stderr);
    let lines = run.stderr_lines();
    assert_eq!(lines.len(), 1, "exactly one stderr line: {:?}", run.stderr);
    assert!(
        lines[0].contains("HERD_TEST_SECRET_NEVER_SET"),
        "names the variable: {:?}",
        lines[0]
    );
    assert!(!accepts(addr), "no port opened");
}
