//! The defaults and limits users read are the program's: every setting herd.conf shows
//! commented out, and every line of the `default` column of docs/configuration.md, parses to
//! the same config as leaving it out; every `A to B` of that page's `limits` column is exactly
//! the range the config parser accepts. A default or a bound changed in src/config.rs without
//! the docs (or the other way round) fails here, naming the file and line to fix.

use herd::config::{parse_config, Config};

const HERD_CONF: &str = include_str!("../herd.conf");
const CONFIGURATION_MD: &str = include_str!("../docs/configuration.md");

/// The first word of every directive line of a config.
const DIRECTIVES: [&str; 8] = [
    "server", "link", "metrics", "places", "log", "store", "limit", "peer",
];

/// A config with one server and nothing else set: every setting at its default.
const MINIMAL: &str = "server A 127.0.0.1:1\n";

fn parse(text: &str) -> Config {
    parse_config(text).unwrap_or_else(|e| panic!("config does not parse: line {e}\n{text}"))
}

/// The lines of two configs' debug forms that differ, to say what a line changed.
fn differences(a: &Config, b: &Config) -> String {
    let (a, b) = (format!("{a:#?}"), format!("{b:#?}"));
    a.lines()
        .zip(b.lines())
        .filter(|(x, y)| x != y)
        .map(|(x, y)| format!("  {} -> {}", x.trim(), y.trim()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether adding `line` to `without` changes nothing. `places url` is compared by the URL
/// it leaves in effect: a URL written out is kept as written even when it is the default.
fn is_default(without: &str, with: &str, line: &str) -> Result<(), String> {
    let (before, after) = (parse(without), parse(with));
    let words: Vec<&str> = line.split_whitespace().collect();
    if words[..2] == ["places", "url"] {
        return if before.places.url() == after.places.url() {
            Ok(())
        } else {
            Err(format!(
                "the default URL is {}, not {}",
                before.places.url(),
                after.places.url()
            ))
        };
    }
    if before == after {
        Ok(())
    } else {
        Err(differences(&before, &after))
    }
}

/// `limit line-bytes` from `limit line-bytes N` or `limit line-bytes 65536`; `server` alone
/// for the directives whose second word is a value.
fn directive_name(line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [first @ ("server" | "link" | "metrics"), ..] => first.to_string(),
        [first, second, ..] => format!("{first} {second}"),
        _ => panic!("not a directive: {line:?}"),
    }
}

/// A commented-out directive of herd.conf: `# limit line-bytes 65536   # comment` ->
/// `limit line-bytes 65536`. A comment whose first word is a directive's is one, so prose in
/// herd.conf must not start a line with `places`, `log`, `limit`...
fn commented_directive(line: &str) -> Option<&str> {
    let text = line.trim_start().strip_prefix('#')?.trim_start();
    let first = text.split_whitespace().next()?;
    DIRECTIVES
        .contains(&first)
        .then(|| text.split('#').next().unwrap_or("").trim())
}

#[test]
fn herd_conf_shows_every_commented_setting_at_its_default() {
    let lines: Vec<&str> = HERD_CONF.lines().collect();
    let mut checked = 0;
    let mut failures = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let Some(directive) = commented_directive(line) else {
            continue;
        };
        let mut with: Vec<&str> = lines.clone();
        with[index] = directive;
        let with = with.join("\n");
        if parse_config(&with).is_err() {
            failures.push(format!(
                "herd.conf:{}: `{directive}` is not a valid line: {}",
                index + 1,
                parse_config(&with).unwrap_err()
            ));
            continue;
        }
        if let Err(why) = is_default(HERD_CONF, &with, directive) {
            failures.push(format!(
                "herd.conf:{}: `{directive}` is not the default:\n{why}",
                index + 1
            ));
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        checked >= 25,
        "only {checked} commented settings found in herd.conf"
    );
}

/// One row of the directive table of docs/configuration.md.
struct Row {
    line_no: usize,
    directive: String,
    default: Option<String>,
    limits: String,
}

/// Splits a table row at the `|` that are not escaped (`new\|legacy` is one cell).
fn cells(line: &str) -> Vec<String> {
    let mut cells = vec![String::new()];
    let mut chars = line.trim().trim_matches('|').chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cells.last_mut().unwrap().push('|');
                chars.next();
            }
            '|' => cells.push(String::new()),
            c => cells.last_mut().unwrap().push(c),
        }
    }
    cells.iter().map(|c| c.trim().to_string()).collect()
}

/// The text of a cell that is one code span, `like this`.
fn code_span(cell: &str) -> Option<&str> {
    let inner = cell.strip_prefix('`')?.strip_suffix('`')?;
    (!inner.contains('`')).then_some(inner)
}

fn directive_table() -> Vec<Row> {
    let lines: Vec<&str> = CONFIGURATION_MD.lines().collect();
    let header = lines
        .iter()
        .position(|l| cells(l) == ["directive", "default", "limits", "what it does"])
        .expect("docs/configuration.md has a table headed | directive | default | limits | what it does |");
    let mut rows = Vec::new();
    for (index, line) in lines.iter().enumerate().skip(header + 2) {
        if !line.starts_with('|') {
            break;
        }
        let line_no = index + 1;
        let cells = cells(line);
        assert_eq!(
            cells.len(),
            4,
            "docs/configuration.md:{line_no}: want 4 cells"
        );
        let directive = code_span(&cells[0]).unwrap_or_else(|| {
            panic!("docs/configuration.md:{line_no}: the directive is not one code span")
        });
        let default = match code_span(&cells[1]) {
            Some(line) => Some(line.to_string()),
            None if cells[1].starts_with('(') => None,
            None => panic!(
                "docs/configuration.md:{line_no}: a default is the directive line as one code \
                 span, or a note in parentheses when no line has the default's effect"
            ),
        };
        rows.push(Row {
            line_no,
            directive: directive_name(directive),
            default,
            limits: cells[2].replace('`', ""),
        });
    }
    rows
}

#[test]
fn the_configuration_page_gives_every_default_as_the_program_has_it() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for row in directive_table() {
        let Some(default) = &row.default else {
            continue;
        };
        let at = format!("docs/configuration.md:{}", row.line_no);
        if directive_name(default) != row.directive {
            failures.push(format!(
                "{at}: the default `{default}` is not a `{}` line",
                row.directive
            ));
            continue;
        }
        let with = format!("{MINIMAL}{default}\n");
        match parse_config(&with) {
            Err(e) => failures.push(format!("{at}: `{default}` does not parse: {e}")),
            Ok(_) => {
                if let Err(why) = is_default(MINIMAL, &with, default) {
                    failures.push(format!("{at}: `{default}` is not the default:\n{why}"));
                }
                checked += 1;
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 30, "only {checked} defaults found in the table");
}

/// `4096`, `1,000` or `2^20`.
fn number(text: &str) -> Option<u64> {
    let text = text.replace(',', "");
    match text.split_once('^') {
        Some((base, exp)) => base.parse::<u64>().ok()?.checked_pow(exp.parse().ok()?),
        None => text.parse().ok(),
    }
}

/// The range a `limits` cell gives: `A to B`, or `0 or A to B` (0, and A to B), optionally
/// followed by `;` or ` (` and a remark. `None` for limits that are not such a range.
fn range(limits: &str) -> Option<(bool, u64, u64)> {
    let main = limits.split([';', '(']).next()?.trim();
    let (zero_too, main) = match main.strip_prefix("0 or ") {
        Some(rest) => (true, rest),
        None => (false, main),
    };
    let (low, high) = main.split_once(" to ")?;
    Some((zero_too, number(low.trim())?, number(high.trim())?))
}

#[test]
fn the_configuration_page_gives_every_range_as_the_parser_has_it() {
    let accepts = |directive: &str, value: u64| {
        parse_config(&format!("{MINIMAL}{directive} {value}\n")).is_ok()
    };
    let mut checked = 0;
    let mut failures = Vec::new();
    for row in directive_table() {
        let Some((zero_too, low, high)) = range(&row.limits) else {
            continue;
        };
        let at = format!("docs/configuration.md:{}", row.line_no);
        let directive = &row.directive;
        let mut expect = |value: u64, accepted: bool| {
            if accepts(directive, value) != accepted {
                failures.push(format!(
                    "{at}: `{directive} {value}` is {} by the parser, but the page says {}",
                    if accepted { "refused" } else { "accepted" },
                    row.limits
                ));
            }
        };
        expect(low, true);
        expect(high, true);
        expect(high + 1, false);
        if low > 0 && !(zero_too && low == 1) {
            expect(low - 1, false);
        }
        if zero_too {
            expect(0, true);
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 20, "only {checked} ranges found in the table");
}

#[test]
fn every_setting_of_herd_conf_is_on_the_configuration_page() {
    let documented: Vec<String> = directive_table().into_iter().map(|r| r.directive).collect();
    let missing: Vec<String> = HERD_CONF
        .lines()
        .filter_map(|line| {
            let directive = commented_directive(line).or_else(|| {
                let text = line.split('#').next()?.trim();
                (!text.is_empty()).then_some(text)
            })?;
            let name = directive_name(directive);
            (!documented.contains(&name)).then_some(name)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "herd.conf uses directives docs/configuration.md does not list: {missing:?}"
    );
}
