//! Byte buffers of one connection: [`LineReader`] frames input into lines, [`OutBuffer`] holds
//! output until the socket takes it.
//!
//! Pure: they are fed and drained with byte slices; no socket appears here. Both keep no heap
//! memory while empty, so an idle connection costs only its struct (bench scenario 4).

/// One framed line, without its `\n` (and without a `\r` just before it, SPEC section 2).
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    Complete(&'a [u8]),
    /// A line longer than the limit: its first `max_line_bytes` bytes. The rest of it, up to
    /// the next `\n`, is discarded by the reader.
    TooLong(&'a [u8]),
}

/// Splits a byte stream into lines of at most `max_line_bytes` bytes.
///
/// Lines that arrive whole inside one chunk are handed out straight from that chunk; only the
/// unfinished tail of a chunk is copied, into `partial`. The consumer may stop after any line
/// ([`feed_until`](LineReader::feed_until)); the rest of that chunk is kept, in order, and
/// handed out by [`resume`](LineReader::resume) before anything read later.
#[derive(Debug)]
pub struct LineReader {
    partial: Vec<u8>,
    max_line_bytes: usize,
    /// Inside an over-long line that was already answered: drop bytes up to the next `\n`.
    discarding: bool,
    /// Input after the line at which the consumer stopped (at most one chunk).
    held: Vec<u8>,
}

impl LineReader {
    pub fn new(max_line_bytes: usize) -> LineReader {
        LineReader {
            partial: Vec::new(),
            max_line_bytes,
            discarding: false,
            held: Vec::new(),
        }
    }

    /// Feeds a chunk of the stream; `emit` gets every line it completes, in order.
    pub fn feed(&mut self, chunk: &[u8], mut emit: impl FnMut(Line<'_>)) {
        self.feed_until(chunk, |line| {
            emit(line);
            true
        });
    }

    /// Feeds a chunk; `emit` gets the lines it completes, in order, until it returns false:
    /// the rest of the chunk is then held for [`resume`](LineReader::resume).
    pub fn feed_until(&mut self, chunk: &[u8], emit: impl FnMut(Line<'_>) -> bool) {
        if !self.held.is_empty() {
            // Behind input already held: keep the order.
            self.held.extend_from_slice(chunk);
            self.resume(emit);
            return;
        }
        if let Some(stopped_at) = self.frame_lines(chunk, emit) {
            self.held.extend_from_slice(&chunk[stopped_at..]);
        }
    }

    /// Whether input is held after a stop.
    pub fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// Hands out the held input's lines, as [`feed_until`](LineReader::feed_until) does.
    pub fn resume(&mut self, emit: impl FnMut(Line<'_>) -> bool) {
        let held = std::mem::take(&mut self.held);
        if let Some(stopped_at) = self.frame_lines(&held, emit) {
            self.held = held[stopped_at..].to_vec();
        }
    }

    /// Frames `chunk`; returns where it stopped when `emit` asked it to.
    fn frame_lines(
        &mut self,
        chunk: &[u8],
        mut emit: impl FnMut(Line<'_>) -> bool,
    ) -> Option<usize> {
        let mut rest = chunk;
        let stopped_at = |rest: &[u8]| Some(chunk.len() - rest.len());
        while !rest.is_empty() {
            let newline = rest.iter().position(|&b| b == b'\n');
            if self.discarding {
                match newline {
                    Some(i) => {
                        self.discarding = false;
                        rest = &rest[i + 1..];
                        continue;
                    }
                    None => return None,
                }
            }
            match newline {
                Some(i) if self.partial.is_empty() => {
                    let go_on = emit(frame(&rest[..i], self.max_line_bytes));
                    rest = &rest[i + 1..];
                    if !go_on {
                        return stopped_at(rest);
                    }
                }
                Some(i) => {
                    // Only the bytes that can matter are kept: a too-long line is cut anyway.
                    let room = (self.max_line_bytes + 1).saturating_sub(self.partial.len());
                    self.partial.extend_from_slice(&rest[..i.min(room)]);
                    let go_on = if i > room {
                        emit(Line::TooLong(&self.partial[..self.max_line_bytes]))
                    } else {
                        emit(frame(&self.partial, self.max_line_bytes))
                    };
                    self.partial.clear();
                    self.release_if_large();
                    rest = &rest[i + 1..];
                    if !go_on {
                        return stopped_at(rest);
                    }
                }
                None => {
                    self.partial.extend_from_slice(rest);
                    if self.is_already_too_long() {
                        let cut = self.max_line_bytes;
                        // Nothing of this chunk is left to hold, whatever `emit` says.
                        emit(Line::TooLong(&self.partial[..cut]));
                        self.partial.clear();
                        self.release_if_large();
                        self.discarding = true;
                    }
                    return None;
                }
            }
        }
        None
    }

    /// The stream has ended: the bytes after the last `\n` are one last line (SPEC section 2:
    /// `printf 'IAMAT ...' | nc -N` gets its answer). The tail of a line already answered as
    /// too long is not a line.
    pub fn finish(&mut self, mut emit: impl FnMut(Line<'_>)) {
        let tail = std::mem::take(&mut self.partial);
        if !tail.is_empty() && !self.discarding {
            emit(frame(&tail, self.max_line_bytes));
        }
        self.discarding = false;
    }

    /// Whether the unfinished line is over the limit whatever comes next. One byte of grace
    /// past the limit is allowed for a `\r` that a following `\n` would drop.
    fn is_already_too_long(&self) -> bool {
        let len = self.partial.len();
        len > self.max_line_bytes + 1
            || (len == self.max_line_bytes + 1 && self.partial.last() != Some(&b'\r'))
    }

    fn release_if_large(&mut self) {
        if self.partial.is_empty() && self.partial.capacity() > 4096 {
            self.partial = Vec::new();
        }
    }
}

/// A whole line: drops one `\r` before the `\n`, then applies the length limit.
fn frame(line: &[u8], max_line_bytes: usize) -> Line<'_> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > max_line_bytes {
        Line::TooLong(&line[..max_line_bytes])
    } else {
        Line::Complete(line)
    }
}

/// Output waiting for the socket: appended at the back, taken from the front.
#[derive(Debug, Default)]
pub struct OutBuffer {
    bytes: Vec<u8>,
    /// How much of `bytes` the socket has already taken.
    sent: usize,
    /// Lines queued since [`take_lines`](OutBuffer::take_lines) (counted by `wire`).
    lines: u64,
}

impl OutBuffer {
    pub fn is_empty(&self) -> bool {
        self.sent == self.bytes.len()
    }

    /// Bytes still to be written.
    pub fn len(&self) -> usize {
        self.bytes.len() - self.sent
    }

    /// Counts `n` lines queued (the metrics' `herd_lines_sent_total`).
    pub fn count_lines(&mut self, n: u64) {
        self.lines += n;
    }

    /// Lines queued since the last call.
    pub fn take_lines(&mut self) -> u64 {
        std::mem::take(&mut self.lines)
    }

    pub fn push(&mut self, data: &[u8]) {
        if self.is_empty() {
            self.bytes.clear();
            self.sent = 0;
        }
        self.bytes.extend_from_slice(data);
    }

    /// The bytes to hand to the socket next.
    pub fn pending(&self) -> &[u8] {
        &self.bytes[self.sent..]
    }

    /// Records that the socket took `n` bytes of [`pending`](Self::pending).
    pub fn consume(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.bytes.len());
        if self.is_empty() {
            self.bytes.clear();
            self.sent = 0;
            if self.bytes.capacity() > 64 * 1024 {
                self.bytes = Vec::new();
            }
        } else if self.sent > 64 * 1024 && self.sent > self.bytes.len() / 2 {
            // Keep a slow reader's buffer from growing by what it already read.
            self.bytes.drain(..self.sent);
            self.sent = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(max: usize, chunks: &[&[u8]]) -> Vec<String> {
        let mut reader = LineReader::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            reader.feed(chunk, |line| {
                out.push(match line {
                    Line::Complete(l) => format!("ok:{}", String::from_utf8_lossy(l)),
                    Line::TooLong(l) => format!("long:{}", String::from_utf8_lossy(l)),
                })
            });
        }
        out
    }

    #[test]
    fn splits_lines_and_drops_cr_before_lf() {
        assert_eq!(
            lines(100, &[b"a\r\nb\nc\r\r\n\n"]),
            ["ok:a", "ok:b", "ok:c\r", "ok:"]
        );
    }

    #[test]
    fn a_lone_cr_is_part_of_the_line() {
        assert_eq!(lines(100, &[b"a\rb\n"]), ["ok:a\rb"]);
    }

    #[test]
    fn keeps_an_unfinished_line_until_its_newline() {
        assert_eq!(
            lines(100, &[b"IAM", b"AT x", b"\r", b"\nnext"]),
            ["ok:IAMAT x"]
        );
    }

    #[test]
    fn one_byte_at_a_time() {
        let text = b"IAMAT a +1+1 1\r\nWHATSAT a 1 1\n";
        let chunks: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(
            lines(100, &chunks),
            ["ok:IAMAT a +1+1 1", "ok:WHATSAT a 1 1"]
        );
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_whole() {
        assert_eq!(lines(4, &[b"abcd\n"]), ["ok:abcd"]);
        assert_eq!(lines(4, &[b"abcd\r\n"]), ["ok:abcd"]);
        assert_eq!(lines(4, &[b"ab", b"cd\r", b"\n"]), ["ok:abcd"]);
    }

    #[test]
    fn an_over_long_line_is_cut_and_its_rest_discarded() {
        assert_eq!(lines(4, &[b"abcde\nok\n"]), ["long:abcd", "ok:ok"]);
        assert_eq!(
            lines(4, &[b"abc", b"defgh", b"ijk", b"l\nnext\n"]),
            ["long:abcd", "ok:next"]
        );
        assert_eq!(lines(4, &[b"abcd\rX\n"]), ["long:abcd"]);
        assert_eq!(lines(4, &[b"ab", b"cd\r\r\n"]), ["long:abcd"]);
    }

    #[test]
    fn an_over_long_line_split_before_its_newline_is_answered_once() {
        assert_eq!(lines(4, &[b"ab", b"cdefghij\nz\n"]), ["long:abcd", "ok:z"]);
    }

    #[test]
    fn the_tail_after_the_last_newline_is_a_last_line() {
        let mut reader = LineReader::new(4);
        let mut got = Vec::new();
        reader.feed(b"ab\ncd", |l| got.push(format!("{l:?}")));
        reader.finish(|l| got.push(format!("{l:?}")));
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], format!("{:?}", Line::Complete(b"cd")));
        // A `\r` before the end is dropped as before a `\n`; nothing after a finish.
        let mut last = Vec::new();
        reader.feed(b"xy\r", |_| {});
        reader.finish(|l| last.push(format!("{l:?}")));
        reader.finish(|l| last.push(format!("{l:?}")));
        assert_eq!(last, [format!("{:?}", Line::Complete(b"xy"))]);
    }

    #[test]
    fn the_rest_of_an_answered_long_line_is_not_a_last_line() {
        let mut reader = LineReader::new(4);
        let mut count = 0;
        reader.feed(b"abcdefgh", |_| count += 1);
        reader.finish(|_| count += 1);
        assert_eq!(count, 1);
        let mut empty = LineReader::new(4);
        empty.finish(|_| count += 1);
        assert_eq!(count, 1);
    }

    #[test]
    fn a_consumer_may_stop_after_any_line_and_resume_in_order() {
        let mut reader = LineReader::new(100);
        let mut got = Vec::new();
        let mut take = |budget: &mut usize, line: Line<'_>| {
            if let Line::Complete(l) = line {
                got.push(String::from_utf8_lossy(l).into_owned());
            }
            *budget -= 1;
            *budget > 0
        };
        let mut budget = 2;
        reader.feed_until(b"a\nb\nc\nd", |l| take(&mut budget, l));
        assert!(reader.has_held());
        // Later input queues behind what is held.
        let mut budget = 1;
        reader.feed_until(b"\ne\n", |l| take(&mut budget, l));
        let mut budget = 10;
        reader.resume(|l| take(&mut budget, l));
        assert!(!reader.has_held());
        assert_eq!(got, ["a", "b", "c", "d", "e"]);
    }

    #[test]
    fn memory_stays_bounded_while_discarding() {
        let mut reader = LineReader::new(8);
        let big = vec![b'x'; 100_000];
        let mut count = 0;
        for _ in 0..10 {
            reader.feed(&big, |_| count += 1);
            assert!(reader.partial.len() <= 9);
        }
        assert_eq!(count, 1);
    }

    #[test]
    fn out_buffer_hands_out_what_is_pending() {
        let mut out = OutBuffer::default();
        assert!(out.is_empty());
        out.push(b"hello ");
        out.push(b"world");
        assert_eq!(out.pending(), b"hello world");
        out.consume(6);
        assert_eq!(out.pending(), b"world");
        assert_eq!(out.len(), 5);
        out.consume(5);
        assert!(out.is_empty());
        out.push(b"again");
        assert_eq!(out.pending(), b"again");
    }

    #[test]
    fn out_buffer_drops_what_a_slow_reader_already_took() {
        let mut out = OutBuffer::default();
        out.push(&vec![1u8; 200_000]);
        out.consume(150_000);
        out.push(&[2u8; 10]);
        assert_eq!(out.len(), 50_010);
        assert!(out.bytes.len() < 100_000);
    }
}
