//! Turns what Places answered (or why it did not) into the WHATSAT reply of SPEC section 2:
//! the AT line, the JSON with at most `bound` results, then an empty line. The JSON is shaped
//! once per Places call ([`shape_json`]) and shared by every WHATSAT that waited on that call
//! or finds it in the cache; `wire::send_whatsat` puts each client's AT line in front of it.
//!
//! Pure. Google's key order is kept (serde_json's `preserve_order`). Failures become JSON in the
//! shape of the new API's errors, so a client always gets one complete reply.

use std::fmt;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::config::PlacesApi;

/// Why a lookup got no HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlacesError {
    /// No complete answer within `places timeout-ms`.
    Timeout,
    /// Connecting, TLS or the exchange failed; the text says how (it never holds the URL).
    Transport(String),
    /// Every worker is busy and the queue is full; the lookup was not attempted.
    QueueFull,
    /// `places max-per-second` calls were already sent this second; not attempted.
    RateLimited,
}

impl fmt::Display for PlacesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlacesError::Timeout => write!(f, "timeout"),
            PlacesError::Transport(why) => write!(f, "transport: {why}"),
            PlacesError::QueueFull => write!(f, "queue full"),
            PlacesError::RateLimited => write!(f, "rate limited"),
        }
    }
}

/// What one lookup came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlacesOutcome {
    Answered { status: u16, body: String },
    Failed(PlacesError),
}

/// What a lookup came to, in kinds the counters and the cache care about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Places answered with results (or with none found).
    Ok,
    /// Places answered with an error (an HTTP error status, or legacy's error `status`).
    ErrorStatus,
    /// Places answered something that is not JSON.
    BadBody,
    Timeout,
    Transport,
    /// Not attempted: the queue was full or the rate limit reached.
    Refused,
}

/// The JSON part of a WHATSAT reply, and a short account of it for the log.
#[derive(Clone, Debug)]
pub struct ShapedJson {
    /// Pretty-printed, runs of newlines squeezed, no trailing newline.
    pub text: Arc<[u8]>,
    /// e.g. `ok status=200 results=5`, `error status=403`, `error timeout`.
    pub summary: String,
    pub kind: OutcomeKind,
}

impl ShapedJson {
    /// Only answers with results may be reused: an error is never cached.
    pub fn is_reusable(&self) -> bool {
        self.kind == OutcomeKind::Ok
    }
}

/// Shapes what one lookup came to, for a WHATSAT asking for at most `bound` results.
pub fn shape_json(api: PlacesApi, bound: u8, outcome: &PlacesOutcome) -> ShapedJson {
    let (json, summary, kind) = reply_json(api, usize::from(bound), outcome);
    shape_value(&json, summary, kind)
}

/// An answer already cut to its bound (the local source's), printed as Places answers are.
pub(super) fn shape_value(json: &Value, summary: String, kind: OutcomeKind) -> ShapedJson {
    let text = squeeze_newlines(&serde_json::to_string_pretty(json).unwrap_or_default());
    ShapedJson {
        text: Arc::from(text.into_bytes()),
        summary,
        kind,
    }
}

/// The JSON of the two refusals (a full queue, the rate limit), shaped once: under a flood of
/// WHATSATs most are refused at once, and shaping the same small error object for each was an
/// eighth of the loop's time. A failure is shaped alike for both APIs (in the new API's shape).
#[derive(Debug)]
pub struct Refusals {
    queue_full: Arc<[u8]>,
    rate_limited: Arc<[u8]>,
}

impl Refusals {
    pub fn new() -> Refusals {
        let shaped = |why| shape_json(PlacesApi::New, 1, &PlacesOutcome::Failed(why)).text;
        Refusals {
            queue_full: shaped(PlacesError::QueueFull),
            rate_limited: shaped(PlacesError::RateLimited),
        }
    }

    /// The reply's JSON for a lookup that was not attempted because of `why`.
    pub fn json(&self, why: PlacesError) -> Arc<[u8]> {
        match why {
            PlacesError::QueueFull => self.queue_full.clone(),
            PlacesError::RateLimited => self.rate_limited.clone(),
            other => shape_json(PlacesApi::New, 1, &PlacesOutcome::Failed(other)).text,
        }
    }
}

impl Default for Refusals {
    fn default() -> Refusals {
        Refusals::new()
    }
}

fn reply_json(
    api: PlacesApi,
    bound: usize,
    outcome: &PlacesOutcome,
) -> (Value, String, OutcomeKind) {
    match outcome {
        PlacesOutcome::Answered { status, body } => {
            let parsed: Option<Value> = serde_json::from_str(body).ok();
            match (is_success(*status), parsed) {
                (true, Some(mut value)) => {
                    let results = keep_first_results(api, &mut value, bound);
                    let (verdict, kind) = match legacy_status(api, &value) {
                        Some(s) if s != "OK" && s != "ZERO_RESULTS" => {
                            (format!("error {s}"), OutcomeKind::ErrorStatus)
                        }
                        _ => ("ok".to_string(), OutcomeKind::Ok),
                    };
                    (
                        value,
                        format!("{verdict} status={status} results={results}"),
                        kind,
                    )
                }
                // Google's own error body, passed through as it came.
                (false, Some(value)) => (
                    value,
                    format!("error status={status}"),
                    OutcomeKind::ErrorStatus,
                ),
                (success, None) => {
                    let message =
                        format!("Places answered HTTP {status} with a body that is not JSON");
                    let code = if success { 502 } else { *status };
                    (
                        error_json(code, &message, status_name(code)),
                        format!("error status={status} body not JSON"),
                        OutcomeKind::BadBody,
                    )
                }
            }
        }
        PlacesOutcome::Failed(error) => {
            let (code, status, message, kind) = match error {
                PlacesError::Timeout => (
                    504,
                    "DEADLINE_EXCEEDED",
                    "Places did not answer in time".to_string(),
                    OutcomeKind::Timeout,
                ),
                PlacesError::Transport(why) => (
                    503,
                    "UNAVAILABLE",
                    format!("Places could not be reached: {why}"),
                    OutcomeKind::Transport,
                ),
                PlacesError::QueueFull => (
                    429,
                    "RESOURCE_EXHAUSTED",
                    "too many Places lookups are waiting; try again later".to_string(),
                    OutcomeKind::Refused,
                ),
                PlacesError::RateLimited => (
                    429,
                    "RESOURCE_EXHAUSTED",
                    "this server's Places rate limit (places max-per-second) is reached; try again \
                     later"
                        .to_string(),
                    OutcomeKind::Refused,
                ),
            };
            (
                error_json(code, &message, status),
                format!("error {error}"),
                kind,
            )
        }
    }
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// Cuts the result list to `bound` entries (`places` for the new API, `results` for legacy);
/// returns how many are left.
fn keep_first_results(api: PlacesApi, value: &mut Value, bound: usize) -> usize {
    let key = match api {
        PlacesApi::New | PlacesApi::Local => "places",
        PlacesApi::Legacy => "results",
    };
    match value.get_mut(key).and_then(Value::as_array_mut) {
        Some(list) => {
            list.truncate(bound);
            list.len()
        }
        None => 0,
    }
}

fn legacy_status(api: PlacesApi, value: &Value) -> Option<&str> {
    match api {
        PlacesApi::Legacy => value.get("status").and_then(Value::as_str),
        PlacesApi::New | PlacesApi::Local => None,
    }
}

fn error_json(code: u16, message: &str, status: &str) -> Value {
    json!({"error": {"code": code, "message": message, "status": status}})
}

/// The status word Google's new API pairs with an HTTP code.
fn status_name(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "NOT_IMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

/// Any run of two or more newlines becomes one; trailing newlines go (SPEC section 2).
fn squeeze_newlines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\n' && out.ends_with('\n') {
            continue;
        }
        out.push(c);
    }
    while out.ends_with('\n') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: &[u8] = b"AT Campbell +0.1 kiwi +34-118 1";

    fn answered(status: u16, body: &str) -> PlacesOutcome {
        PlacesOutcome::Answered {
            status,
            body: body.to_string(),
        }
    }

    fn reply_text(api: PlacesApi, bound: u8, outcome: &PlacesOutcome) -> String {
        // Framed as `wire::send_whatsat` sends it.
        let json = shape_json(api, bound, outcome).text;
        format!(
            "{}\n{}\n\n",
            String::from_utf8_lossy(AT),
            String::from_utf8_lossy(&json)
        )
    }

    fn json_of(reply: &str) -> Value {
        let (at, rest) = reply.split_once('\n').unwrap();
        assert_eq!(at.as_bytes(), AT);
        assert!(rest.ends_with("}\n\n"), "{rest:?}");
        assert!(!rest.trim_end().contains("\n\n"));
        serde_json::from_str(rest).unwrap()
    }

    #[test]
    fn new_api_results_are_cut_to_the_bound() {
        let body = r#"{"places": [{"id": "1"}, {"id": "2"}, {"id": "3"}]}"#;
        let reply = reply_text(PlacesApi::New, 2, &answered(200, body));
        let value = json_of(&reply);
        assert_eq!(value["places"].as_array().unwrap().len(), 2);
        assert_eq!(
            shape_json(PlacesApi::New, 2, &answered(200, body)).summary,
            "ok status=200 results=2"
        );
    }

    #[test]
    fn nothing_found_is_passed_through() {
        let reply = reply_text(PlacesApi::New, 5, &answered(200, "{}"));
        assert_eq!(reply, format!("{}\n{{}}\n\n", String::from_utf8_lossy(AT)));
    }

    #[test]
    fn legacy_keeps_the_first_results_and_the_other_fields() {
        let results: Vec<Value> = (0..20).map(|i| json!({"name": format!("p{i}")})).collect();
        let body = json!({"html_attributions": [], "results": results, "status": "OK"}).to_string();
        let value = json_of(&reply_text(PlacesApi::Legacy, 3, &answered(200, &body)));
        let names: Vec<&str> = value["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["p0", "p1", "p2"]);
        assert_eq!(value["status"], "OK");
    }

    #[test]
    fn google_key_order_is_kept() {
        let body = r#"{"places": [{"name": "n", "id": "i", "formattedAddress": "a"}]}"#;
        let reply = reply_text(PlacesApi::New, 5, &answered(200, body));
        let name = reply.find("\"name\"").unwrap();
        let id = reply.find("\"id\"").unwrap();
        let address = reply.find("\"formattedAddress\"").unwrap();
        assert!(name < id && id < address, "{reply}");
    }

    #[test]
    fn google_error_bodies_are_passed_through() {
        let body =
            r#"{"error": {"code": 403, "message": "denied", "status": "PERMISSION_DENIED"}}"#;
        let outcome = answered(403, body);
        let value = json_of(&reply_text(PlacesApi::New, 5, &outcome));
        assert_eq!(value, serde_json::from_str::<Value>(body).unwrap());
        assert_eq!(
            shape_json(PlacesApi::New, 5, &outcome).summary,
            "error status=403"
        );
    }

    #[test]
    fn failures_become_error_json() {
        let cases = [
            (
                PlacesOutcome::Failed(PlacesError::Timeout),
                504,
                "DEADLINE_EXCEEDED",
            ),
            (
                PlacesOutcome::Failed(PlacesError::Transport("connection refused".into())),
                503,
                "UNAVAILABLE",
            ),
            (
                PlacesOutcome::Failed(PlacesError::QueueFull),
                429,
                "RESOURCE_EXHAUSTED",
            ),
            (
                PlacesOutcome::Failed(PlacesError::RateLimited),
                429,
                "RESOURCE_EXHAUSTED",
            ),
            (answered(200, "<html>"), 502, "UNKNOWN"),
            (answered(500, "oops"), 500, "INTERNAL"),
        ];
        for (outcome, code, status) in cases {
            let value = json_of(&reply_text(PlacesApi::New, 5, &outcome));
            assert_eq!(value["error"]["code"], code, "{outcome:?}");
            assert_eq!(value["error"]["status"], status, "{outcome:?}");
            assert!(value["error"]["message"].as_str().unwrap().len() > 5);
        }
    }

    #[test]
    fn legacy_error_status_is_logged_as_an_error() {
        let body = r#"{"error_message": "bad key", "results": [], "status": "REQUEST_DENIED"}"#;
        let shaped = shape_json(PlacesApi::Legacy, 5, &answered(200, body));
        assert_eq!(shaped.summary, "error REQUEST_DENIED status=200 results=0");
        assert!(!shaped.is_reusable(), "an error is never cached");
        let ok = shape_json(
            PlacesApi::Legacy,
            5,
            &answered(200, r#"{"results": [], "status": "OK"}"#),
        );
        assert!(ok.is_reusable());
    }

    #[test]
    fn newline_runs_are_squeezed() {
        assert_eq!(squeeze_newlines("a\n\n\nb\n\n"), "a\nb");
    }
}
