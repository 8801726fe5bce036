//! The time stamp every record starts with, `2026-11-23T14:16:28.018160Z `, formatted from a
//! Unix time the caller read. Pure: it never reads the clock and never writes a record.

/// `2026-11-23T14:16:28.018160Z ` (with its space): every record starts with one.
pub(super) const STAMP_BYTES: usize = 28;

pub(super) type Stamp = [u8; STAMP_BYTES];

/// Formats `YYYY-MM-DDTHH:MM:SS.uuuuuuZ ` (RFC 3339, UTC), redoing the date part only when
/// the second changes.
#[derive(Default)]
pub(super) struct StampClock {
    second: Option<u64>,
    text: [u8; STAMP_BYTES],
}

impl StampClock {
    pub(super) fn stamp(&mut self, unix_secs: u64, micros: u32) -> &Stamp {
        if self.second != Some(unix_secs) {
            let (year, month, day) = civil_from_days((unix_secs / 86_400) as i64);
            let of_day = unix_secs % 86_400;
            let head = format!(
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.",
                of_day / 3600,
                of_day / 60 % 60,
                of_day % 60
            );
            self.text[..20].copy_from_slice(&head.as_bytes()[..20]);
            self.text[26] = b'Z';
            self.text[27] = b' ';
            self.second = Some(unix_secs);
        }
        let mut rest = micros.min(999_999);
        for i in (20..26).rev() {
            self.text[i] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        &self.text
    }
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01
/// (the well-known era-based conversion: 400-year eras of 146,097 days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_rfc3339_utc_with_microseconds() {
        let mut clock = StampClock::default();
        assert_eq!(clock.stamp(0, 0), b"1970-01-01T00:00:00.000000Z ");
        assert_eq!(
            clock.stamp(1_621_464_827, 959_498),
            b"2021-05-19T22:53:47.959498Z "
        );
        assert_eq!(
            clock.stamp(1_621_464_827, 7),
            b"2021-05-19T22:53:47.000007Z "
        );
        // 2024-02-29 (leap day) and 2100-03-01 (century, not leap)
        assert_eq!(&clock.stamp(1_709_164_800, 0)[..10], b"2024-02-29");
        assert_eq!(&clock.stamp(4_107_542_400, 0)[..10], b"2100-03-01");
    }
}
