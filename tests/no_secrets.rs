//! The Places key never appears in a log line, at any level (README "The Places key"): with
//! `log level trace` (where ureq logs the request line with its query and ureq-proto dumps every
//! byte it sends), on every Places path (an answer, an empty answer, an error status, a
//! timeout, a refused connection, a URL that cannot be used), for both APIs, the key and its
//! percent-encoded form are in no log line, no reply and nothing on stderr, while the fake
//! Places did receive it.

use std::time::Duration;

use herd_test_support::{
    checks::check_framing,
    client::Client,
    fake_places::{FakePlaces, Reply},
    harness::{self, herd_bin, refused_places_url, Herd, HerdConfig, KEY_ENV},
};

/// A key with characters a query must percent-encode, so the key's raw form (the
/// `X-Goog-Api-Key` header) and its encoded form (legacy's `key=`) differ.
const KEY: &str = "Zq8k3y/with+special=chars";
/// `KEY` as herd puts it in a legacy query.
const KEY_ENCODED: &str = "Zq8k3y%2Fwith%2Bspecial%3Dchars";

/// The length of the pieces of the key searched for: ureq-proto's trace dump shows what it
/// sends 16 bytes a row, so a key it logged may be split across rows; every piece of this
/// length is searched for, and a key cut into rows of 16 always leaves one that long.
const PIECE: usize = 8;

#[derive(Clone, Copy, Debug)]
enum Api {
    New,
    Legacy,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::New => "new",
            Api::Legacy => "legacy",
        }
    }
}

/// A server `Alpha` at `log level trace` with `places api API`, `places url URL` and the key
/// `KEY` in its key variable.
fn start(api: Api, url: &str) -> Herd {
    let mut last_error = String::new();
    for _attempt in 0..3 {
        let config = HerdConfig::single("Alpha")
            .expect("a free port")
            .with("log level trace")
            .with(&format!("places api {}", api.name()))
            .with(&format!("places url {url}"))
            .with("places timeout-ms 300")
            // Every WHATSAT makes its own call.
            .with("places cache-ms 0");
        let mut herd = Herd::new(&herd_bin(), config, "no-secrets").expect("a test herd");
        herd.env[0].push((KEY_ENV.to_string(), Some(KEY.to_string())));
        match herd.start_server(0) {
            Ok(()) => return herd,
            Err(error) => last_error = error,
        }
    }
    panic!("{last_error}");
}

/// What a run left behind: every reply, the log and stderr (after SIGTERM flushed the log).
struct Run {
    replies: String,
    log: String,
    stderr: String,
}

/// Sends one WHATSAT per step (each step sets up the fake first) on one connection, checks
/// every reply is complete, then stops the server and collects what it wrote.
fn run(mut herd: Herd, steps: &[&dyn Fn()]) -> Run {
    let mut client = Client::connect(herd.config.addrs[0].port());
    let at = client.iamat("c1", "+34.068930-118.445127", "1621464827.959498503");
    let mut replies = String::new();
    for step in steps {
        step();
        client.send("WHATSAT c1 10 3");
        let reply = client.read_whatsat_reply();
        check_framing(&reply, &at);
        replies.push_str(&reply.raw);
    }
    drop(client);
    herd.terminate();
    Run {
        replies,
        log: harness::read_lossy(&herd.log_path(0)),
        stderr: harness::read_lossy(&herd.stderr_path(0)),
    }
}

/// Every `PIECE`-byte piece of the key, raw and percent-encoded (both cases of the hex).
fn key_pieces() -> Vec<String> {
    let mut pieces = Vec::new();
    for form in [
        KEY.to_string(),
        KEY_ENCODED.to_string(),
        KEY_ENCODED.to_ascii_lowercase(),
    ] {
        for start in 0..=form.len() - PIECE {
            pieces.push(form[start..start + PIECE].to_string());
        }
    }
    pieces
}

/// None of the key is in `text` (`what` names it in the failure).
fn assert_no_key(what: &str, text: &str) {
    for piece in key_pieces() {
        if let Some(line) = text.lines().find(|line| line.contains(&piece)) {
            panic!("{what} holds {piece:?} of the key: {line:?}\n{what}:\n{text}");
        }
    }
}

/// Nothing of the key in the log, the replies or stderr; herd's own records were still
/// written (one `places` record per WHATSAT), so the log was not simply empty.
fn assert_clean(api: Api, path: &str, run: &Run, lookups: usize) {
    let what = |part: &str| format!("{part} ({} api, {path})", api.name());
    assert_no_key(&what("the log"), &run.log);
    assert_no_key(&what("a reply"), &run.replies);
    assert_no_key(&what("stderr"), &run.stderr);
    let places = run
        .log
        .lines()
        .filter(|line| line.contains("places conn="))
        .count();
    assert_eq!(
        places,
        lookups,
        "one places record per lookup in {}:\n{}",
        what("the log"),
        run.log
    );
}

/// The fake received the key in every request: the header (new API) or the query (legacy).
fn assert_fake_got_the_key(api: Api, fake: &FakePlaces, count: usize) {
    let requests = fake.requests();
    assert_eq!(requests.len(), count, "every lookup reached the fake");
    for request in requests {
        match api {
            Api::New => assert_eq!(request.header("x-goog-api-key"), Some(KEY), "{request:?}"),
            Api::Legacy => assert_eq!(
                request.query_param("key").as_deref(),
                Some(KEY_ENCODED),
                "{request:?}"
            ),
        }
    }
}

/// An answer, `{}` / ZERO_RESULTS, Google's error status and a timeout, from the fake.
fn fake_paths(api: Api) {
    let fake = FakePlaces::start();
    let url = match api {
        Api::New => fake.new_api_url(),
        Api::Legacy => fake.legacy_url(),
    };
    let herd = start(api, &url);
    let result = run(
        herd,
        &[
            &|| fake.set_reply(Reply::Places),
            &|| fake.set_reply(Reply::NoPlaces),
            &|| {
                fake.set_reply(Reply::google_error(
                    403,
                    "PERMISSION_DENIED",
                    "The provided API key is invalid.",
                ))
            },
            &|| {
                fake.set_reply(Reply::Places);
                fake.set_delay(Duration::from_secs(2));
            },
        ],
    );
    assert!(
        result.replies.contains("DEADLINE_EXCEEDED"),
        "the last lookup timed out:\n{}",
        result.replies
    );
    assert_fake_got_the_key(api, &fake, 4);
    assert_clean(api, "the fake's answers and a timeout", &result, 4);
}

/// A URL nothing listens on, and URLs that cannot be used at all: each fails without any
/// traffic beyond the loopback.
fn failing_paths(api: Api) {
    let refused = refused_places_url().expect("a free port");
    let refused = refused
        .strip_prefix("places url ")
        .expect("a places url line");
    for url in [refused, "http://127.0.0.1:0/", "http://[::1"] {
        let result = run(start(api, url), &[&|| (), &|| ()]);
        assert!(
            result.replies.contains("\"error\""),
            "{url}: error replies:\n{}",
            result.replies
        );
        assert_clean(api, url, &result, 2);
    }
}

#[test]
fn no_key_in_the_log_at_trace_with_the_new_api() {
    fake_paths(Api::New);
}

#[test]
fn no_key_in_the_log_at_trace_with_the_legacy_api() {
    fake_paths(Api::Legacy);
}

#[test]
fn no_key_in_the_log_at_trace_when_places_fails_with_the_new_api() {
    failing_paths(Api::New);
}

#[test]
fn no_key_in_the_log_at_trace_when_places_fails_with_the_legacy_api() {
    failing_paths(Api::Legacy);
}
