//! SIGHUP reloads the config (README "Running it for real"): links added and removed while
//! serving, a new server joining a running herd, and configs that are refused (invalid, or a
//! change that cannot be applied) with the old config kept.
//!
//! Every server here runs from one herd.conf in one directory, as the README's herd does; a
//! test edits that file and sends SIGHUP, then waits on what the servers log and know.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use herd_test_support::client::Client;
use herd_test_support::cluster::known_line;
use herd_test_support::harness::{
    free_ports, herd_bin, refused_places_url, wait_for_log, wait_until, Process, TempDir,
};

const WAIT: Duration = Duration::from_secs(10);

struct Servers {
    dir: TempDir,
    names: Vec<&'static str>,
    addrs: Vec<SocketAddr>,
    places: String,
    processes: Vec<Option<Process>>,
}

impl Servers {
    fn new(names: &[&'static str]) -> Servers {
        Servers {
            dir: TempDir::new("reload").expect("a temporary directory"),
            names: names.to_vec(),
            addrs: free_ports(names.len()).expect("free ports"),
            places: refused_places_url().expect("a free port"),
            processes: names.iter().map(|_| None).collect(),
        }
    }

    /// `names` started from one config in which Alpha links to Bravo, once an update made at
    /// Alpha has reached Bravo (so the link is up).
    fn linked(names: &[&'static str]) -> Servers {
        let mut herd = Servers::new(names);
        herd.write_config(&["Alpha", "Bravo"], &[("Alpha", "Bravo")], "");
        herd.start("Alpha");
        herd.start("Bravo");
        herd.iamat("Alpha", "kiwi");
        herd.wait_knows("Bravo", "kiwi");
        herd
    }

    fn index(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|n| *n == name)
            .expect("a server")
    }

    /// Writes herd.conf with the `server` lines of `servers`, the `links`, and `extra` lines.
    fn write_config(&self, servers: &[&str], links: &[(&str, &str)], extra: &str) {
        let mut text = String::new();
        for name in servers {
            text += &format!("server {name} {}\n", self.addrs[self.index(name)]);
        }
        for (a, b) in links {
            text += &format!("link {a} {b}\n");
        }
        text += &format!(
            "{}\npeer secret-file herd.secret\npeer backoff-min-ms 50\npeer backoff-max-ms 400\n\
             places max-per-second 1\n{extra}\n",
            self.places
        );
        self.dir
            .write("herd.conf", &text)
            .expect("herd.conf written");
    }

    #[track_caller]
    fn start(&mut self, name: &str) {
        let i = self.index(name);
        let mut command = Command::new(herd_bin());
        command
            .arg(name)
            .arg("herd.conf")
            .current_dir(self.dir.path());
        let stderr = self.dir.path().join(format!("{name}.stderr"));
        let mut process = Process::spawn(command, &stderr).expect("herd started");
        if let Err(why) = process.wait_listening(&self.addrs[i..=i]) {
            panic!("{name} {why}");
        }
        self.processes[i] = Some(process);
    }

    fn hangup(&self, name: &str) {
        self.processes[self.index(name)]
            .as_ref()
            .expect("running")
            .signal("HUP")
            .expect("SIGHUP sent");
    }

    fn log_path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Waits for `count` log lines of `name` holding `needle`; returns the log.
    #[track_caller]
    fn wait_log(&self, name: &str, needle: &str, count: usize) -> String {
        wait_for_log(&self.log_path(name), needle, count, WAIT)
    }

    fn client(&self, name: &str) -> Client {
        Client::connect(self.addrs[self.index(name)].port())
    }

    fn iamat(&self, name: &str, id: &str) -> String {
        self.client(name).iamat(id, "+1+2", "100")
    }

    #[track_caller]
    fn wait_knows(&self, name: &str, id: &str) {
        let mut client = self.client(name);
        wait_until(&format!("{name} to learn {id}"), WAIT, || {
            if known_line(&mut client, id).is_some() {
                Ok(())
            } else {
                Err(format!("its log ends:\n{}", tail(&self.log_path(name))))
            }
        });
    }
}

fn tail(path: &Path) -> String {
    herd_test_support::harness::tail(&herd_test_support::harness::read_lossy(path), 30)
}

/// The README's recipe, in small: a server joins a running herd. Its `server` and `link`
/// lines are added to the config, the running servers get SIGHUP, the new one starts, and
/// updates flow both ways at once.
#[test]
fn a_new_server_joins_a_running_herd_after_a_reload() {
    let mut herd = Servers::linked(&["Alpha", "Bravo", "Charlie"]);

    herd.write_config(
        &["Alpha", "Bravo", "Charlie"],
        &[("Alpha", "Bravo"), ("Bravo", "Charlie")],
        "",
    );
    herd.hangup("Alpha");
    herd.hangup("Bravo");
    herd.wait_log("Alpha", "reload herd.conf: servers", 1);
    herd.wait_log(
        "Bravo",
        "reload herd.conf: links added: Charlie; servers",
        1,
    );
    herd.start("Charlie");
    // Bravo's new link resyncs Charlie; Charlie's updates reach Alpha through Bravo (Alpha
    // takes updates taken by Charlie, a server it did not know before the reload).
    herd.wait_knows("Charlie", "kiwi");
    herd.iamat("Charlie", "pear");
    herd.wait_knows("Alpha", "pear");
    let log = herd.wait_log("Bravo", "link up Charlie", 1);
    assert!(log.contains("link Charlie added"), "{log}");
}

/// An invalid config is refused with the file and line, and the server keeps running on the
/// config it had: its links stay up and updates still flow.
#[test]
fn an_invalid_config_is_refused_and_the_old_one_keeps_running() {
    let herd = Servers::linked(&["Alpha", "Bravo"]);

    herd.write_config(
        &["Alpha", "Bravo"],
        &[],
        "limit line-bytes 100\nlnik Alpha Bravo",
    );
    herd.hangup("Alpha");
    let log = herd.wait_log("Alpha", "reload refused: herd.conf:", 1);
    assert!(
        log.contains("reload refused: herd.conf:9: unknown directive 'lnik'"),
        "{log}"
    );
    // Nothing of it was applied: the link is up, and lines are as long as before.
    herd.iamat("Alpha", "pear");
    herd.wait_knows("Bravo", "pear");
    let long_id = "x".repeat(200);
    let reply = herd.iamat("Alpha", &long_id);
    assert!(reply.starts_with("AT Alpha "), "{reply}");

    // A change that cannot be made at run time: Alpha's own address.
    let moved = free_ports(1).expect("a port")[0];
    let text = format!(
        "server Alpha {moved}\nserver Bravo {}\nlink Alpha Bravo\n{}\npeer secret-file herd.secret\n",
        herd.addrs[1], herd.places
    );
    herd.dir.write("herd.conf", &text).expect("written");
    herd.hangup("Alpha");
    let log = herd.wait_log(
        "Alpha",
        "reload refused: herd.conf:1: the listen address",
        1,
    );
    assert!(log.contains("cannot change at run time"), "{log}");
    herd.iamat("Alpha", "plum");
    herd.wait_knows("Bravo", "plum");
}

/// A link removed by a reload is closed on both sides and not retried; settings that can
/// change (here `limit line-bytes`) apply to the connections that follow.
#[test]
fn a_removed_link_is_closed_and_new_limits_apply() {
    let herd = Servers::linked(&["Alpha", "Bravo"]);

    herd.write_config(&["Alpha", "Bravo"], &[], "limit line-bytes 100");
    herd.hangup("Alpha");
    herd.hangup("Bravo");
    let log = herd.wait_log("Alpha", "reload herd.conf: links removed: Bravo; limits", 1);
    assert!(log.contains("link Bravo removed"), "{log}");
    herd.wait_log("Bravo", "reload herd.conf: links removed: Alpha; limits", 1);
    let reply = herd
        .client("Alpha")
        .request(&format!("IAMAT {} +1+2 100", "x".repeat(200)));
    assert!(reply.starts_with("? IAMAT xxx"), "{reply}");
    assert_eq!(reply.len(), "? ".len() + 100, "{reply}");
    // Neither side connects again: no link comes up after the reload.
    let log = herd.wait_log("Alpha", "reload herd.conf", 1);
    let ups_before = log.matches("link up Bravo").count();
    herd.iamat("Alpha", "pear"); // a turn of Alpha's loop, with nothing to flood it to
    herd.hangup("Alpha");
    let log = herd.wait_log("Alpha", "reload herd.conf: nothing changed", 1);
    assert_eq!(log.matches("link up Bravo").count(), ups_before, "{log}");
}

/// The metrics address can move on a reload: the page is served at the new address, and the
/// old one stops answering; a new `limit metrics-connections` applies too.
#[test]
fn the_metrics_address_moves_on_a_reload() {
    use herd_test_support::metrics::{sample, scrape};
    let mut herd = Servers::new(&["Alpha"]);
    let ports = free_ports(2).expect("ports");
    let (first, second) = (ports[0], ports[1]);
    herd.write_config(&["Alpha"], &[], &format!("metrics Alpha {first}"));
    herd.start("Alpha");
    wait_until(&format!("a page at {first}"), WAIT, || {
        scrape(first).map(drop)
    });
    herd.write_config(&["Alpha"], &[], &format!("metrics Alpha {second}"));
    herd.hangup("Alpha");
    herd.wait_log("Alpha", "reload herd.conf: metrics address", 1);
    herd.wait_log("Alpha", &format!("metrics listen {second}"), 1);
    let page = scrape(second).expect("the page at the new address");
    assert!(sample(&page, "herd_clients_known", "").is_some(), "{page}");
    assert!(scrape(first).is_err(), "the old address still answers");
}

/// Places and log settings change on a reload: the next WHATSAT goes to the new `places url`,
/// and after `log lines off` a client's lines are no longer logged (SPEC section 8).
#[test]
fn places_and_log_settings_change_on_a_reload() {
    use herd_test_support::fake_places::FakePlaces;
    let fake = FakePlaces::start();
    let mut herd = Servers::new(&["Alpha"]);
    herd.write_config(&["Alpha"], &[], "log lines on");
    herd.start("Alpha");
    let mut client = herd.client("Alpha");
    client.iamat("loud", "+1+2", "100");
    // Before: Places is a closed port, so the lookup fails at once with an error JSON.
    client.send("WHATSAT loud 10 5");
    let before = client.read_until_blank_line();
    assert!(before.contains("\"error\""), "{before}");

    herd.write_config(
        &["Alpha"],
        &[],
        &format!("places url {}\nlog lines off", fake.new_api_url()),
    );
    herd.hangup("Alpha");
    herd.wait_log("Alpha", "reload herd.conf: places; log", 1);
    client.send("WHATSAT loud 10 5");
    let after = client.read_until_blank_line();
    assert!(!after.contains("\"error\""), "{after}");
    assert_eq!(fake.request_count(), 1, "the lookup went to the new URL");

    let closes = herd_test_support::harness::read_lossy(&herd.log_path("Alpha"))
        .matches("close conn=")
        .count();
    let mut quiet = herd.client("Alpha");
    quiet.iamat("quiet", "+1+2", "100");
    drop(quiet);
    let log = herd.wait_log("Alpha", "close conn=", closes + 1);
    assert!(
        log.contains("IAMAT loud"),
        "lines were logged before: {log}"
    );
    assert!(
        !log.contains("quiet"),
        "lines are logged after log lines off: {log}"
    );
}

/// A reload is all or nothing: one whose new metrics address another process holds is refused
/// as a whole (the `log lines off` beside it does not take effect either), and the same file is
/// applied in full by the next SIGHUP once the address is free.
#[test]
fn a_reload_that_cannot_be_applied_in_full_changes_nothing() {
    use herd_test_support::metrics::scrape;
    let mut herd = Servers::new(&["Alpha"]);
    let ports = free_ports(2).expect("ports");
    let (first, taken) = (ports[0], ports[1]);
    herd.write_config(
        &["Alpha"],
        &[],
        &format!("metrics Alpha {first}\nlog lines on"),
    );
    herd.start("Alpha");
    wait_until(&format!("a page at {first}"), WAIT, || {
        scrape(first).map(drop)
    });

    let holder = std::net::TcpListener::bind(taken).expect("hold the new metrics address");
    herd.write_config(
        &["Alpha"],
        &[],
        &format!("metrics Alpha {taken}\nlog lines off"),
    );
    herd.hangup("Alpha");
    let log = herd.wait_log(
        "Alpha",
        "reload refused: herd.conf: cannot listen for metrics",
        1,
    );
    assert!(
        log.contains(&taken.to_string()),
        "the refusal names the address:\n{log}"
    );
    // Nothing of it applied: lines are still logged, the page is still at the old address.
    herd.client("Alpha").iamat("still-logged", "+1+2", "100");
    herd.wait_log("Alpha", "IAMAT still-logged", 1);
    assert!(
        scrape(first).is_ok(),
        "the old metrics address stopped answering"
    );

    drop(holder);
    herd.hangup("Alpha");
    herd.wait_log("Alpha", "reload herd.conf: ", 1);
    herd.wait_log("Alpha", &format!("metrics listen {taken}"), 1);
    assert!(scrape(taken).is_ok(), "no page at the new address");
    let closes = herd_test_support::harness::read_lossy(&herd.log_path("Alpha"))
        .matches("close conn=")
        .count();
    herd.client("Alpha").iamat("quiet", "+1+2", "100");
    let log = herd.wait_log("Alpha", "close conn=", closes + 1);
    assert!(
        !log.contains("quiet"),
        "log lines off took effect too:\n{log}"
    );
}
