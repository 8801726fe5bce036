//! What a SIGHUP may change: the re-read config is checked whole against the one running, and
//! is either refused, with the reason and the line it comes from, or turned into a [`Plan`]
//! the loop carries out. Pure.
//!
//! Changed at run time: the links (added, removed, a neighbour's address), the other servers
//! of the herd, Places settings, limits, peer timing, `log level`, `log lines`, rotation and
//! the server's metrics address; with `places api local`, the places file is read again
//! (SPEC section 10) when it changed since it was read, whether the config did or not. Not: the server's own name and listen address (the socket
//! is bound, and its neighbours know it), the store, the peer secret and `log dir` — a change
//! to one of those is refused, and the server keeps its old config.

use crate::config::{Config, PeerSettings, PlacesApi, ServerEntry};

/// What a reload changes, for the loop to carry out.
#[derive(Debug)]
pub struct Plan {
    /// Neighbours linked now that were not before, in config order.
    pub links_added: Vec<ServerEntry>,
    /// Neighbours no longer linked.
    pub links_removed: Vec<String>,
    /// Neighbours still linked whose address changed: reconnect there.
    pub links_moved: Vec<ServerEntry>,
    pub places_changed: bool,
    /// `places api local` in the new config: its places file is read again if it changed
    /// since it was read (it may have where the config did not). What that finds is the
    /// loop's to say: this plan cannot know.
    pub check_places_file: bool,
    pub limits_changed: bool,
    pub peer_timing_changed: bool,
    pub log_changed: bool,
    pub servers_changed: bool,
    /// This server's `metrics` address changed (or appeared, or went).
    pub metrics_changed: bool,
    /// The config to run from now on.
    pub config: Config,
}

impl Plan {
    pub fn changes_nothing(&self) -> bool {
        self.links_added.is_empty()
            && self.links_removed.is_empty()
            && self.links_moved.is_empty()
            && !self.places_changed
            && !self.limits_changed
            && !self.peer_timing_changed
            && !self.log_changed
            && !self.servers_changed
            && !self.metrics_changed
    }

    /// One line saying what changed (for the log).
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        let names = |entries: &[ServerEntry]| {
            entries
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        };
        if !self.links_added.is_empty() {
            parts.push(format!("links added: {}", names(&self.links_added)));
        }
        if !self.links_removed.is_empty() {
            parts.push(format!("links removed: {}", self.links_removed.join(" ")));
        }
        if !self.links_moved.is_empty() {
            parts.push(format!("links moved: {}", names(&self.links_moved)));
        }
        for (changed, what) in [
            (self.servers_changed, "servers"),
            (self.places_changed, "places"),
            (self.limits_changed, "limits"),
            (self.peer_timing_changed, "peer timing"),
            (self.log_changed, "log"),
            (self.metrics_changed, "metrics address"),
        ] {
            if changed {
                parts.push(what.to_string());
            }
        }
        if parts.is_empty() {
            "nothing changed".to_string()
        } else {
            parts.join("; ")
        }
    }
}

/// Why a reload was refused, and the line of the new file that says what cannot change.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub line: Option<usize>,
    pub problem: String,
}

/// Checks `new` (parsed from `text`) against the `running` config of server `name`.
pub fn plan(name: &str, running: &Config, new: Config, text: &str) -> Result<Plan, Refusal> {
    refuse_fixed_changes(name, running, &new, text)?;
    let (links_added, links_removed, links_moved) = link_changes(name, running, &new);
    Ok(Plan {
        links_added,
        links_removed,
        links_moved,
        places_changed: new.places != running.places,
        check_places_file: new.places.api == PlacesApi::Local,
        limits_changed: new.limits != running.limits,
        peer_timing_changed: peer_timing(&running.peer) != peer_timing(&new.peer),
        log_changed: new.log != running.log,
        servers_changed: new.servers != running.servers,
        metrics_changed: new.metrics_addr(name) != running.metrics_addr(name),
        config: new,
    })
}

/// What cannot change at run time: the server's own name and address, the store, the peer
/// secret and the log's directory. A change to any is refused, naming its line.
fn refuse_fixed_changes(
    name: &str,
    running: &Config,
    new: &Config,
    text: &str,
) -> Result<(), Refusal> {
    let at = |directive: &[&str], problem: String| {
        Err(Refusal {
            line: line_of(text, directive),
            problem,
        })
    };
    let Some(own) = new.server(name) else {
        return Err(Refusal {
            line: None,
            problem: format!("server {name} is no longer in the config; stop it instead"),
        });
    };
    let old_own = running.server(name).map(|s| s.addr);
    if old_own != Some(own.addr) {
        return at(
            &["server", name],
            format!(
                "the listen address of {name} cannot change at run time ({} -> {}); restart it",
                old_own.map_or("none".to_string(), |a| a.to_string()),
                own.addr
            ),
        );
    }
    if new.store != running.store {
        return at(
            &["store"],
            "store settings cannot change at run time; restart the server".to_string(),
        );
    }
    if new.peer.secret != running.peer.secret {
        return at(
            &["peer"],
            "the peer secret cannot change at run time; restart the herd".to_string(),
        );
    }
    if new.tls_clients(name) != running.tls_clients(name) {
        return at(
            &["tls", name],
            format!("the tls line of {name} cannot change at run time; restart it"),
        );
    }
    if new.peer.tls != running.peer.tls {
        return at(
            &["peer", "tls"],
            "peer tls cannot change at run time; restart the herd".to_string(),
        );
    }
    if let Err(e) = new.check_links_secure() {
        return Err(Refusal {
            line: Some(e.line),
            problem: e.problem,
        });
    }
    if new.log.dir != running.log.dir {
        return at(
            &["log", "dir"],
            "log dir cannot change at run time; restart the server".to_string(),
        );
    }
    Ok(())
}

/// The neighbours of `name` linked now that were not, no longer linked, and still linked at a
/// new address.
fn link_changes(
    name: &str,
    running: &Config,
    new: &Config,
) -> (Vec<ServerEntry>, Vec<String>, Vec<ServerEntry>) {
    let old_neighbours = running.neighbours(name);
    let new_neighbours = new.neighbours(name);
    let added = new_neighbours
        .iter()
        .filter(|n| !old_neighbours.iter().any(|o| o.name == n.name))
        .map(|n| (*n).clone())
        .collect();
    let removed = old_neighbours
        .iter()
        .filter(|o| !new_neighbours.iter().any(|n| n.name == o.name))
        .map(|o| o.name.clone())
        .collect();
    let moved = new_neighbours
        .iter()
        .filter(|n| {
            old_neighbours
                .iter()
                .any(|o| o.name == n.name && o.addr != n.addr)
        })
        .map(|n| (*n).clone())
        .collect();
    (added, removed, moved)
}

/// The peer settings every link's timing comes from (the secret is checked apart).
fn peer_timing(peer: &PeerSettings) -> impl PartialEq {
    (
        peer.backoff_min,
        peer.backoff_max,
        peer.ping_interval,
        peer.max_owed,
        peer.stall_limit,
        peer.hold_limit,
        peer.check_interval,
    )
}

/// The 1-based line of the first directive whose fields start with `prefix`.
fn line_of(text: &str, prefix: &[&str]) -> Option<usize> {
    text.lines()
        .position(|line| {
            let line = line.split('#').next().unwrap_or_default();
            let mut fields = line.split_whitespace();
            prefix.iter().all(|p| fields.next() == Some(p))
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;

    const BASE: &str = "server A 127.0.0.1:1\nserver B 127.0.0.1:2\nserver C 127.0.0.1:3\n\
                        link A B\n";

    fn plan_for(new_text: &str) -> Result<Plan, String> {
        let running = parse_config(BASE).unwrap();
        let new = parse_config(new_text).unwrap();
        plan("A", &running, new, new_text).map_err(|r| match r.line {
            Some(line) => format!("{line}: {}", r.problem),
            None => r.problem,
        })
    }

    #[test]
    fn the_same_config_changes_nothing() {
        let plan = plan_for(BASE).unwrap();
        assert!(plan.changes_nothing(), "{}", plan.summary());
        assert_eq!(plan.summary(), "nothing changed");
    }

    #[test]
    fn links_added_removed_and_moved_are_named() {
        let text = "server A 127.0.0.1:1\nserver B 127.0.0.1:2\nserver C 127.0.0.1:3\n\
                    link A C\n";
        let plan = plan_for(text).unwrap();
        assert_eq!(plan.links_added.len(), 1);
        assert_eq!(plan.links_added[0].name, "C");
        assert_eq!(plan.links_removed, ["B"]);
        assert!(plan.links_moved.is_empty());
        assert_eq!(plan.summary(), "links added: C; links removed: B");

        let text = "server A 127.0.0.1:1\nserver B 127.0.0.1:9\nserver C 127.0.0.1:3\n\
                    link A B\n";
        let plan = plan_for(text).unwrap();
        assert_eq!(plan.links_moved[0].name, "B");
        assert!(plan.servers_changed);
        assert!(plan.links_added.is_empty() && plan.links_removed.is_empty());
    }

    #[test]
    fn a_sixth_server_is_added_with_its_link() {
        let text = format!("{BASE}server D 127.0.0.1:4\nlink D A\n");
        let plan = plan_for(&text).unwrap();
        assert!(plan.servers_changed);
        assert_eq!(plan.links_added[0].name, "D");
        assert_eq!(plan.summary(), "links added: D; servers");
    }

    #[test]
    fn settings_that_apply_at_run_time_are_flagged() {
        let text = format!(
            "{BASE}places timeout-ms 100\nlimit in-flight 4\npeer ping-ms 300\nlog level debug\n"
        );
        let plan = plan_for(&text).unwrap();
        assert!(plan.places_changed && plan.limits_changed);
        assert!(plan.peer_timing_changed && plan.log_changed);
        assert!(!plan.servers_changed);
        assert_eq!(plan.summary(), "places; limits; peer timing; log");
    }

    #[test]
    fn with_places_api_local_the_file_is_checked_at_every_reload() {
        let local = format!("{BASE}places api local\nplaces file p.csv\n");
        let to_local = plan_for(&local).unwrap();
        assert!(to_local.places_changed && to_local.check_places_file);
        assert_eq!(to_local.summary(), "places");
        let running = parse_config(&local).unwrap();
        let again = plan("A", &running, parse_config(&local).unwrap(), &local).unwrap();
        assert!(!again.places_changed && again.check_places_file);
        assert!(again.changes_nothing(), "{}", again.summary());
        // Back to Google: no file to read.
        let to_google = plan("A", &running, parse_config(BASE).unwrap(), BASE).unwrap();
        assert!(to_google.places_changed && !to_google.check_places_file);
    }

    #[test]
    fn our_own_metrics_address_may_move() {
        let plan = plan_for(&format!("{BASE}metrics A 127.0.0.1:9100\n")).unwrap();
        assert!(plan.metrics_changed);
        assert_eq!(plan.summary(), "metrics address");
        let plan = plan_for(&format!("{BASE}metrics B 127.0.0.1:9100\n")).unwrap();
        assert!(
            !plan.metrics_changed,
            "another server's address is not ours"
        );
    }

    #[test]
    fn what_cannot_change_is_refused_with_its_line() {
        let moved = "server B 127.0.0.1:2\nserver A 127.0.0.1:7\nserver C 127.0.0.1:3\n\
                     link A B\n";
        let e = plan_for(moved).unwrap_err();
        assert_eq!(
            e,
            "2: the listen address of A cannot change at run time (127.0.0.1:1 -> \
             127.0.0.1:7); restart it"
        );
        let e = plan_for(&format!("{BASE}# comment\nstore dir data\n")).unwrap_err();
        assert!(e.starts_with("6: store settings cannot change"), "{e}");
        let e = plan_for(&format!("{BASE}peer secret none\n")).unwrap_err();
        assert!(e.starts_with("5: the peer secret cannot change"), "{e}");
        let e = plan_for(&format!("{BASE}log dir /tmp\n")).unwrap_err();
        assert!(e.starts_with("5: log dir cannot change"), "{e}");
        let gone = "server B 127.0.0.1:2\n";
        let e = plan_for(gone).unwrap_err();
        assert!(e.contains("server A is no longer in the config"), "{e}");
    }
}
