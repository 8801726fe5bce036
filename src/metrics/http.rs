//! Just enough HTTP/1.x for the metrics listener: [`decide`] reads the bytes of a request
//! received so far and says whether to wait for more or what to answer; [`frame`] makes the
//! whole response. Every response closes the connection (`Connection: close`), so there is
//! no keep-alive, no pipelining and no request body to care about.
//!
//! Pure: bytes in, bytes out; the loop reads and writes the sockets.

/// `Content-Type` of the metrics page: the text exposition format, version 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The short page at `/`, for a person who opens the address in a browser.
pub const INDEX_PAGE: &str = "<!DOCTYPE html>\n<html><head><title>herd</title></head>\n\
<body><h1>herd</h1><p><a href=\"/metrics\">Metrics</a> (Prometheus text format)</p></body></html>\n";

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    Metrics,
    Index,
}

/// The statuses this server answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    /// The request did not arrive within `limit metrics-timeout-ms`.
    Timeout,
    /// The request head is over `limit metrics-request-bytes`.
    TooLarge,
    /// `limit metrics-connections` connections are open already.
    Busy,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::Timeout => 408,
            Status::TooLarge => 431,
            Status::Busy => 503,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::Timeout => "Request Timeout",
            Status::TooLarge => "Request Header Fields Too Large",
            Status::Busy => "Service Unavailable",
        }
    }
}

/// What to do with the request bytes received so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The head is not complete yet: read more.
    NeedMore,
    /// Answer with this page (`head_only` for `HEAD`: the headers without the body).
    Serve { page: Page, head_only: bool },
    /// Answer with this error status.
    Refuse(Status),
}

/// Decides on the request in `received`: the head (request line and headers) ends at the first
/// empty line; a head longer than `max_bytes` is refused, complete or not.
pub fn decide(received: &[u8], max_bytes: usize) -> Decision {
    let Some(head_len) = head_length(received) else {
        return if received.len() >= max_bytes {
            Decision::Refuse(Status::TooLarge)
        } else {
            Decision::NeedMore
        };
    };
    if head_len > max_bytes {
        return Decision::Refuse(Status::TooLarge);
    }
    let Ok(head) = std::str::from_utf8(&received[..head_len]) else {
        return Decision::Refuse(Status::BadRequest);
    };
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Decision::Refuse(Status::BadRequest);
    };
    let method_ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if !method_ok || !target.starts_with('/') || !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Decision::Refuse(Status::BadRequest);
    }
    // Every header is `Name: value`; none of them changes the answer.
    let headers_ok = lines
        .filter(|l| !l.is_empty())
        .all(|l| l.split_once(':').is_some_and(|(name, _)| is_token(name)));
    if !headers_ok {
        return Decision::Refuse(Status::BadRequest);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Decision::Refuse(Status::MethodNotAllowed),
    };
    let path = target.split('?').next().unwrap_or(target);
    match path {
        "/metrics" => Decision::Serve {
            page: Page::Metrics,
            head_only,
        },
        "/" => Decision::Serve {
            page: Page::Index,
            head_only,
        },
        _ => Decision::Refuse(Status::NotFound),
    }
}

/// The length of the head, its closing empty line included (`\r\n\r\n`, or bare `\n\n`).
fn head_length(received: &[u8]) -> Option<usize> {
    let mut at = 0;
    while let Some(i) = received[at..].iter().position(|&b| b == b'\n') {
        let end = at + i + 1;
        let rest = &received[end..];
        if rest.starts_with(b"\n") {
            return Some(end + 1);
        }
        if rest.starts_with(b"\r\n") {
            return Some(end + 2);
        }
        at = end;
    }
    None
}

fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A whole response that closes the connection.
pub fn frame(status: Status, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let allow = match status {
        Status::MethodNotAllowed => "Allow: GET, HEAD\r\n",
        _ => "",
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}\
         Connection: close\r\n\r\n",
        status.code(),
        status.reason(),
        body.len()
    );
    let mut response = head.into_bytes();
    if !head_only {
        response.extend_from_slice(body);
    }
    response
}

/// The response for an error status: a one-line text body.
pub fn error_response(status: Status) -> Vec<u8> {
    let body = format!("{} {}\n", status.code(), status.reason());
    frame(status, "text/plain; charset=utf-8", body.as_bytes(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 256;

    fn serve(page: Page) -> Decision {
        Decision::Serve {
            page,
            head_only: false,
        }
    }

    #[test]
    fn a_scrape_is_answered_with_the_metrics_page() {
        let scrape = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9100\r\n\
            Accept: text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\nUser-Agent: Prometheus/2.42.0\r\n\r\n";
        assert_eq!(decide(scrape, 1024), serve(Page::Metrics));
        assert_eq!(
            decide(b"GET /metrics HTTP/1.0\n\n", MAX),
            serve(Page::Metrics)
        );
        assert_eq!(
            decide(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", MAX),
            serve(Page::Metrics)
        );
        assert_eq!(decide(b"GET / HTTP/1.1\r\n\r\n", MAX), serve(Page::Index));
        assert_eq!(
            decide(b"HEAD /metrics HTTP/1.1\r\n\r\n", MAX),
            Decision::Serve {
                page: Page::Metrics,
                head_only: true
            }
        );
    }

    #[test]
    fn a_head_arriving_in_pieces_waits_for_its_empty_line() {
        let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 0..request.len() {
            assert_eq!(
                decide(&request[..cut], MAX),
                Decision::NeedMore,
                "cut at {cut}"
            );
        }
        assert_eq!(decide(request, MAX), serve(Page::Metrics));
        // A body or the next request after the head changes nothing.
        let mut more = request.to_vec();
        more.extend_from_slice(b"GET /nope HTTP/1.1\r\n\r\n");
        assert_eq!(decide(&more, MAX), serve(Page::Metrics));
    }

    #[test]
    fn other_paths_are_not_found_and_other_methods_not_allowed() {
        for path in ["/metric", "/metrics/", "/index.html", "/favicon.ico"] {
            let request = format!("GET {path} HTTP/1.1\r\n\r\n");
            assert_eq!(
                decide(request.as_bytes(), MAX),
                Decision::Refuse(Status::NotFound)
            );
        }
        assert_eq!(
            decide(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", MAX),
            Decision::Refuse(Status::MethodNotAllowed)
        );
    }

    #[test]
    fn malformed_requests_are_bad() {
        for request in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET /metrics HTTP/2.0\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"get /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1 x\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\n: empty name\r\n\r\n",
            b"GET /m\xffetrics HTTP/1.1\r\n\r\n",
            b"\r\n\r\n",
        ] {
            assert_eq!(
                decide(request, MAX),
                Decision::Refuse(Status::BadRequest),
                "{}",
                String::from_utf8_lossy(request)
            );
        }
    }

    #[test]
    fn a_head_over_the_limit_is_refused_complete_or_not() {
        let long = format!(
            "GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(MAX)
        );
        assert_eq!(
            decide(long.as_bytes(), MAX),
            Decision::Refuse(Status::TooLarge)
        );
        assert_eq!(
            decide(&long.as_bytes()[..MAX], MAX),
            Decision::Refuse(Status::TooLarge)
        );
        assert_eq!(decide(&long.as_bytes()[..MAX - 1], MAX), Decision::NeedMore);
    }

    #[test]
    fn a_response_says_its_length_and_closes() {
        let response = frame(Status::Ok, METRICS_CONTENT_TYPE, b"x 1\n", false);
        assert_eq!(
            String::from_utf8(response).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: 4\r\nConnection: close\r\n\r\nx 1\n"
        );
        let head = frame(Status::Ok, METRICS_CONTENT_TYPE, b"x 1\n", true);
        assert!(String::from_utf8(head)
            .unwrap()
            .ends_with("Content-Length: 4\r\nConnection: close\r\n\r\n"));
        let refused = String::from_utf8(error_response(Status::MethodNotAllowed)).unwrap();
        assert!(
            refused.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{refused}"
        );
        assert!(refused.contains("\r\nAllow: GET, HEAD\r\n"), "{refused}");
        assert!(
            refused.ends_with("\r\n\r\n405 Method Not Allowed\n"),
            "{refused}"
        );
    }
}
