//! A summary of the client table that two servers compare to learn, in a few bytes, whether
//! they hold the same records (anti-entropy, see docs/protocol.md).
//!
//! Each record's line is hashed to 64 bits and the hashes are XORed together, over the whole
//! table and over each of [`BUCKETS`] buckets (a record's bucket follows from its client id
//! alone, so both servers put a client in the same bucket whatever its location). XOR makes
//! the summary incremental: a record that changes takes its old hash out and puts its new one
//! in, O(1) per change, and the order records arrived in does not matter.
//!
//! The hash is this module's own, fixed forever: two servers built by different compilers
//! must agree on it, which std's hashers do not promise. It takes eight bytes a step (a line
//! is hashed on every change and every record at start-up).

/// Buckets the table is split into when the whole-table digests differ.
pub const BUCKETS: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    whole: u64,
    buckets: Box<[u64; BUCKETS]>,
}

impl Default for Digest {
    fn default() -> Digest {
        Digest {
            whole: 0,
            buckets: Box::new([0; BUCKETS]),
        }
    }
}

impl Digest {
    /// A record of `client` changed from `old` (none for a new client) to `new`.
    pub fn replace(&mut self, client: &[u8], old: Option<&[u8]>, new: &[u8]) {
        let mut change = hash(new);
        if let Some(old) = old {
            change ^= hash(old);
        }
        self.whole ^= change;
        self.buckets[bucket_of(client)] ^= change;
    }

    pub fn whole(&self) -> u64 {
        self.whole
    }

    pub fn buckets(&self) -> &[u64; BUCKETS] {
        &self.buckets
    }
}

/// The bucket of a client.
pub fn bucket_of(client: &[u8]) -> usize {
    (hash(client) >> 56) as usize
}

/// Eight bytes at a time (little-endian words; the last one zero-padded, and the length mixed
/// in so that padding cannot collide with zero bytes): each word is XORed in, multiplied and
/// rotated; then MurmurHash3's 64-bit finaliser, so that every input bit moves every output
/// bit (the top bits pick the bucket).
fn hash(bytes: &[u8]) -> u64 {
    const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (bytes.len() as u64).wrapping_mul(MULTIPLIER);
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let word = u64::from_le_bytes(word.try_into().expect("chunks of eight"));
        h = (h ^ word).wrapping_mul(MULTIPLIER).rotate_left(29);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(last))
            .wrapping_mul(MULTIPLIER)
            .rotate_left(29);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// `HERD-BUCKETS` carries the bucket digests as one run of hex, 16 digits each.
pub fn format_buckets(buckets: &[u64; BUCKETS]) -> String {
    buckets.iter().map(|b| format!("{b:016x}")).collect()
}

pub fn parse_buckets(text: &[u8]) -> Option<Box<[u64; BUCKETS]>> {
    if text.len() != BUCKETS * 16 {
        return None;
    }
    let mut buckets = Box::new([0u64; BUCKETS]);
    for (slot, digits) in buckets.iter_mut().zip(text.chunks(16)) {
        *slot = parse_hex(digits)?;
    }
    Some(buckets)
}

/// Sixteen hex digits (a digest, an epoch).
pub fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.len() != 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_records_in_any_order_give_the_same_digest() {
        let records = [("a", "AT A a 1"), ("b", "AT A b 1"), ("c", "AT A c 1")];
        let mut one = Digest::default();
        let mut other = Digest::default();
        for (client, line) in records {
            one.replace(client.as_bytes(), None, line.as_bytes());
        }
        for (client, line) in records.iter().rev() {
            other.replace(client.as_bytes(), None, line.as_bytes());
        }
        assert_eq!(one, other);
        assert_ne!(one.whole(), 0);
    }

    #[test]
    fn a_changed_record_changes_the_digest_and_its_bucket_only() {
        let mut d = Digest::default();
        d.replace(b"a", None, b"AT A a 1");
        d.replace(b"b", None, b"AT A b 1");
        let before = d.clone();
        d.replace(b"a", Some(b"AT A a 1"), b"AT A a 2");
        assert_ne!(d.whole(), before.whole());
        let changed: Vec<usize> = (0..BUCKETS)
            .filter(|&k| d.buckets()[k] != before.buckets()[k])
            .collect();
        assert_eq!(changed, [bucket_of(b"a")]);
        // Back to the old line: back to the old digest.
        d.replace(b"a", Some(b"AT A a 2"), b"AT A a 1");
        assert_eq!(d, before);
    }

    /// What [`hash`] gives, by an independent Python version of it.
    const HASH_OF_A_LINE: u64 = 0x7028_8401_f0b2_9671;
    const HASH_OF_NOTHING: u64 = 0xefd0_1f60_ba99_2926;

    #[test]
    fn the_hash_is_fixed() {
        // Servers of one herd must agree: these values may never change (checked against
        // the same function written in Python).
        assert_eq!(hash(b"AT Campbell +0.1 kiwi +1+1 1"), HASH_OF_A_LINE);
        assert_eq!(hash(b""), HASH_OF_NOTHING);
        assert_ne!(hash(b"kiwi"), hash(b"kiwi\0"), "the length counts");
        assert!(
            (0..1000)
                .map(|n| bucket_of(format!("client{n}").as_bytes()))
                .collect::<std::collections::HashSet<_>>()
                .len()
                > 200,
            "clients spread over the buckets"
        );
    }

    #[test]
    fn buckets_cross_the_wire_and_back() {
        let mut d = Digest::default();
        d.replace(b"a", None, b"AT A a 1");
        let text = format_buckets(d.buckets());
        assert_eq!(text.len(), BUCKETS * 16);
        assert_eq!(parse_buckets(text.as_bytes()).as_deref(), Some(d.buckets()));
        assert_eq!(parse_buckets(&text.as_bytes()[1..]), None);
        assert_eq!(parse_hex(b"00000000000000zz"), None);
    }
}
