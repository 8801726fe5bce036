//! The Prometheus alerting rules shipped in docs/alerts/ are valid (`promtool check rules`)
//! and fire as their tests say (`promtool test rules`): a link down for a minute, a server not
//! scraped for a minute, the store failing, a link lagging for five minutes, Places errors
//! above a tenth of the calls, log records dropped, a link certificate expiring within 21 days.

use std::path::Path;
use std::process::Command;

use herd_test_support::harness::program_or_skip;

const RULES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/alerts");

fn promtool(args: &[&str]) {
    let Some(promtool) = program_or_skip("promtool", "Debian: apt-get install prometheus") else {
        return;
    };
    let out = Command::new(promtool)
        .args(args)
        .current_dir(Path::new(RULES_DIR))
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_shipped_alerting_rules_are_valid() {
    promtool(&["check", "rules", "herd.rules.yml"]);
}

#[test]
fn the_shipped_alerting_rules_fire_as_their_tests_say() {
    promtool(&["test", "rules", "herd.rules.test.yml"]);
}
