//! The `--at` argument: RFC 3339 date-times with any offset, and plain dates.
//!
//! Owns: turning what a person types into a UTC [`Timestamp`]. Must not read the clock.
//!
//! Accepted: `2026-03-03T14:00:00Z`, `2026-03-03T14:00:00+01:00` (any offset from -23:59 to +23:59;
//! `t`, `z` and a space for the `T` are accepted as RFC 3339 allows), fractional seconds
//! (`14:00:00.75Z`, truncated toward the past: the answer is never about a later instant than asked),
//! a leap second `:60` (taken as `:59` of the same minute, also toward the past), and a plain date
//! `2026-03-03`, meaning 00:00:00Z that day.

use ledger_format::Timestamp;

/// What the error message lists as accepted.
pub const ACCEPTED: &str =
    "accepted: an RFC 3339 time with an offset (2026-03-03T14:00:00Z, 2026-03-03T14:00:00+01:00, fractional seconds allowed) or a plain date (2026-03-03, meaning 00:00:00Z that day)";

/// Parses the value of the flag `flag` (named in the error).
pub fn parse_at(flag: &str, text: &str) -> Result<Timestamp, String> {
    let err = |why: &str| format!("{flag} {text:?}: {why}; {ACCEPTED}");
    let b = text.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    // The date: YYYY-MM-DD.
    let (Some(year), Some(month), Some(day)) = (digits(0..4), digits(5..7), digits(8..10)) else {
        return Err(err("not a date of the form YYYY-MM-DD"));
    };
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return Err(err("not a date of the form YYYY-MM-DD"));
    }
    if !(1..=12).contains(&month) || day < 1 || day > ledger_format::time::days_in_month(year, month) {
        return Err(err("no such day"));
    }
    let days = ledger_format::time::days_from_civil(year, month, day);
    if b.len() == 10 {
        return from_unix(days * 86_400).ok_or_else(|| err("outside the years 1970 to 9999 (UTC)"));
    }
    // The time: [Tt ]HH:MM:SS[.fraction].
    if !matches!(b[10], b'T' | b't' | b' ') || b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
        return Err(err("not a time of the form YYYY-MM-DDTHH:MM:SS followed by Z or an offset"));
    }
    let (Some(hour), Some(minute), Some(mut second)) = (digits(11..13), digits(14..16), digits(17..19)) else {
        return Err(err("not a time of the form YYYY-MM-DDTHH:MM:SS followed by Z or an offset"));
    };
    if hour > 23 || minute > 59 || second > 60 {
        return Err(err("no such time of day"));
    }
    // A leap second names the last second of its minute: toward the past, like a fraction.
    second = second.min(59);
    let mut rest = &b[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let n = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return Err(err("a '.' must be followed by digits of a second"));
        }
        rest = &fraction[n..];
    }
    let offset = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| -> Option<i64> {
                (a.is_ascii_digit() && b.is_ascii_digit()).then(|| i64::from((a - b'0') * 10 + (b - b'0')))
            };
            let (Some(h), Some(m)) = (two(*h1, *h2), two(*m1, *m2)) else {
                return Err(err("the offset must be Z or +HH:MM / -HH:MM"));
            };
            if h > 23 || m > 59 {
                return Err(err("no such offset"));
            }
            let seconds = h * 3600 + m * 60;
            if *sign == b'-' {
                -seconds
            } else {
                seconds
            }
        }
        [] => return Err(err("a time needs Z or an offset such as +01:00 (local time is ambiguous)")),
        _ => return Err(err("the offset must be Z or +HH:MM / -HH:MM")),
    };
    let local = days * 86_400 + hour * 3600 + minute * 60 + second;
    from_unix(local - offset).ok_or_else(|| err("outside the years 1970 to 9999 (UTC)"))
}

fn from_unix(seconds: i64) -> Option<Timestamp> {
    Timestamp::from_unix(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Result<String, String> {
        parse_at("--at", text).map(|t| t.to_string())
    }

    #[test]
    fn accepted_forms_and_their_utc_instant() {
        let table = [
            ("2026-03-03T14:00:00Z", "2026-03-03T14:00:00Z"),
            ("2026-03-03t14:00:00z", "2026-03-03T14:00:00Z"),
            ("2026-03-03 14:00:00Z", "2026-03-03T14:00:00Z"),
            ("2026-03-03T14:00:00+01:00", "2026-03-03T13:00:00Z"),
            ("2026-03-03T14:00:00-05:30", "2026-03-03T19:30:00Z"),
            ("2026-03-03T14:00:00+00:00", "2026-03-03T14:00:00Z"),
            ("2026-03-03T14:00:00-00:00", "2026-03-03T14:00:00Z"),
            // Offsets that cross a day, a month and a year.
            ("2026-03-03T00:30:00+02:00", "2026-03-02T22:30:00Z"),
            ("2026-03-01T01:00:00+02:00", "2026-02-28T23:00:00Z"),
            ("2026-12-31T23:00:00-02:00", "2027-01-01T01:00:00Z"),
            ("2027-01-01T00:00:00+23:59", "2026-12-31T00:01:00Z"),
            // Leap days.
            ("2024-02-29T12:00:00Z", "2024-02-29T12:00:00Z"),
            ("2000-02-29", "2000-02-29T00:00:00Z"),
            ("2024-03-01T01:00:00+02:00", "2024-02-29T23:00:00Z"),
            // Fractions and leap seconds are truncated toward the past.
            ("2026-03-03T14:00:00.999999999Z", "2026-03-03T14:00:00Z"),
            ("2026-03-03T14:00:59.5+01:00", "2026-03-03T13:00:59Z"),
            ("2026-12-31T23:59:60Z", "2026-12-31T23:59:59Z"),
            // Plain dates are midnight UTC.
            ("2026-03-03", "2026-03-03T00:00:00Z"),
            ("1970-01-01", "1970-01-01T00:00:00Z"),
            ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59Z"),
        ];
        for (text, utc) in table {
            assert_eq!(at(text).as_deref(), Ok(utc), "{text}");
        }
    }

    #[test]
    fn bad_input_is_refused_naming_the_flag_and_the_accepted_forms() {
        for (text, why) in [
            ("yesterday", "not a date"),
            ("", "not a date"),
            ("2026-3-3", "not a date"),
            ("2026/03/03", "not a date"),
            ("2025-02-29", "no such day"),
            ("2026-04-31", "no such day"),
            ("2026-13-01", "no such day"),
            ("2026-03-03T14:00:00", "needs Z or an offset"),
            ("2026-03-03T14:00Z", "not a time"),
            ("2026-03-03T24:00:00Z", "no such time"),
            ("2026-03-03T14:60:00Z", "no such time"),
            ("2026-03-03T14:00:61Z", "no such time"),
            ("2026-03-03T14:00:00.Z", "followed by digits"),
            ("2026-03-03T14:00:00+0100", "offset must be"),
            ("2026-03-03T14:00:00+1:00", "offset must be"),
            ("2026-03-03T14:00:00+24:00", "no such offset"),
            ("2026-03-03T14:00:00+01:60", "no such offset"),
            ("2026-03-03T14:00:00Z ", "offset must be"),
            ("2026-03-03x", "not a time"),
            ("1969-12-31", "outside the years"),
            ("1970-01-01T00:30:00+01:00", "outside the years"),
            ("9999-12-31T23:00:00-02:00", "outside the years"),
            ("+2026-03-03", "not a date"),
        ] {
            let e = at(text).expect_err(text);
            assert!(e.contains(why), "{text}: {e}");
            assert!(e.starts_with("--at ") && e.contains(ACCEPTED), "{text}: {e}");
        }
    }
}
