//! `herd status CONFIG` (README "Running it for real") against real herds: one with a server
//! down and a link cut (the table shows both; exit status 1), and a healthy one (exit status
//! 0; `--watch` redraws until SIGINT).

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use herd_test_support::cluster::Herd;
use herd_test_support::harness::{free_ports, herd_bin, wait_for, wait_until, TempDir};
use herd_test_support::metrics::{metrics_lines, scrape};
use herd_test_support::run::{run_herd, Finished};

/// A herd of `names` with a metrics address each (in every server's config), and the config
/// `herd status` reads: every server at its real address and its metrics line.
fn herd_with_metrics(
    names: &[&str],
    links: &[(&str, &str)],
) -> (Herd, TempDir, PathBuf, Vec<SocketAddr>) {
    let mut herd = Herd::new(names, links);
    let (lines, addrs) = metrics_lines(names);
    for line in &lines {
        herd.line(line);
    }
    let dir = TempDir::new("status").expect("a temp dir");
    let mut text = String::new();
    for name in names {
        text += &format!("server {name} 127.0.0.1:{}\n", herd.port(name));
    }
    for (a, b) in links {
        text += &format!("link {a} {b}\n");
    }
    for line in &lines {
        text += line;
        text.push('\n');
    }
    let config = dir.write("status.conf", &text).expect("status.conf");
    (herd, dir, config, addrs)
}

/// A child process, killed and reaped on drop (also when the test fails first).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status(dir: &TempDir, config: &Path) -> Finished {
    run_herd(&["status", &config.display().to_string()], dir.path())
}

/// The table row of `server`, split into cells (two spaces or more apart).
fn row<'a>(table: &'a str, server: &str) -> Vec<&'a str> {
    let line = table
        .lines()
        .find(|l| l.split("  ").next() == Some(server))
        .unwrap_or_else(|| panic!("no row for {server} in:\n{table}"));
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

#[test]
fn a_server_down_and_a_link_cut_show_in_the_table_and_exit_1() {
    let (mut herd, dir, config, _) = herd_with_metrics(
        &["Alpha", "Beta", "Gamma"],
        &[("Alpha", "Beta"), ("Beta", "Gamma")],
    );
    // Alpha reaches Beta at a port nobody listens on: Alpha's link to Beta is cut, Beta's
    // link to Alpha is not.
    let nowhere = free_ports(1).expect("a free port")[0].port();
    herd.route("Alpha", "Beta", nowhere);
    herd.start_all();
    herd.wait_link_syncs("Beta", "Alpha", 1);
    herd.kill("Gamma");
    // Beta notices Gamma's end at once (EOF, then refused connects); a status read in the
    // meantime would still show its link to Gamma up, so read until it does not.
    let link_down = "Beta's table row to show its link to Gamma down";
    let finished = wait_for(link_down, Duration::from_secs(15), || {
        let finished = status(&dir, &config);
        if row(&finished.stdout, "Beta").get(7) == Some(&"1/2") {
            Ok(finished)
        } else {
            Err(finished.stdout)
        }
    });
    let table = &finished.stdout;
    assert_eq!(
        finished.status.code(),
        Some(1),
        "{table}{}",
        finished.stderr
    );
    let alpha = row(table, "Alpha");
    assert_eq!(&alpha[..2], ["Alpha", "up, link down"], "{table}");
    assert_eq!(alpha[7], "0/1", "{table}");
    let beta = row(table, "Beta");
    assert_eq!(&beta[..2], ["Beta", "up, link down"], "{table}");
    assert_eq!(beta[7], "1/2", "{table}");
    let gamma = row(table, "Gamma");
    assert_eq!(&gamma[..3], ["Gamma", "down", "-"], "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("Gamma: 127.0.0.1:") && l.contains("refused")),
        "why Gamma is down:\n{table}"
    );
}

#[test]
fn a_healthy_herd_exits_0_and_watch_redraws_until_interrupted() {
    let (mut herd, dir, config, addrs) =
        herd_with_metrics(&["Alpha", "Beta"], &[("Alpha", "Beta")]);
    herd.start_all();
    herd.wait_all_linked();
    herd.iamat("Alpha", "kiwi", "+1+2", "1621464827.5");
    herd.wait_knows(
        "Beta",
        &[("kiwi".into(), herd.known("Alpha", "kiwi").unwrap())],
    );
    let finished = status(&dir, &config);
    let table = &finished.stdout;
    assert_eq!(
        finished.status.code(),
        Some(0),
        "{table}{}",
        finished.stderr
    );
    for name in ["Alpha", "Beta"] {
        let cells = row(table, name);
        assert_eq!(cells[1], "up", "{table}");
        assert_eq!(cells[3], "1", "one client known: {table}");
        assert_eq!(cells[7], "1/1", "{table}");
    }
    assert!(table.starts_with("server "), "{table}");

    // --watch: a table a second, until SIGINT; then the exit status of the last one.
    let mut watch = Reaped(
        Command::new(herd_bin())
            .args(["status", "--watch", &config.display().to_string()])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start herd status --watch"),
    );
    let mut stdout = watch.0.stdout.take().expect("its stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    wait_until(
        "--watch to draw two tables",
        Duration::from_secs(15),
        || {
            while let Ok(bytes) = rx.try_recv() {
                seen.push_str(&String::from_utf8_lossy(&bytes));
            }
            if seen.matches("Ctrl-C stops").count() >= 2 {
                Ok(())
            } else {
                Err(seen.clone())
            }
        },
    );
    assert!(
        seen.contains("\x1b[H\x1b[2J"),
        "each redraw clears the screen"
    );
    let sent = Command::new("kill")
        .args(["-INT", &watch.0.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(sent.success());
    let exit = wait_for(
        "herd status --watch to stop on SIGINT",
        Duration::from_secs(5),
        || watch.0.try_wait().expect("try_wait"),
    );
    assert_eq!(exit.code(), Some(0), "the last table was all up");
    // Scraped every second, the servers still answer their clients and their metrics.
    for (name, addr) in ["Alpha", "Beta"].iter().zip(&addrs) {
        assert!(herd.known(name, "kiwi").is_some());
        assert!(scrape(*addr).is_ok());
    }
}
