//! Points in time as people write them (RFC 3339) and as the log keeps them
//! (microseconds since the Unix epoch), without a calendar dependency.

/// Parses `2026-12-06T03:15:00Z`, `2026-12-06T03:15:00.25+01:00`, `2026-12-06 03:15:00`
/// (UTC) or a plain integer of microseconds since the Unix epoch.
///
/// ```
/// use polycall_state::time::{parse, format};
/// assert_eq!(parse("1970-01-01T00:00:01.5Z").unwrap(), 1_500_000);
/// assert_eq!(parse("2000-03-01T01:00:00+01:00").unwrap(), parse("2000-03-01T00:00:00Z").unwrap());
/// assert_eq!(format(parse("2026-12-06T03:15:00.000042Z").unwrap()), "2026-12-06T03:15:00.000042Z");
/// assert!(parse("yesterday").is_err());
/// ```
pub fn parse(s: &str) -> Result<u64, TimeError> {
    let s = s.trim();
    let bad = || TimeError::NotATime {
        input: s.to_owned(),
    };
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| bad());
    }
    let b = s.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num =
        |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i64>().ok()).ok_or_else(bad);
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    let mut rest = &s[19..];
    let mut micros = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits: String = frac.chars().take_while(char::is_ascii_digit).collect();
        if digits.is_empty() {
            return Err(bad());
        }
        let padded: String = digits
            .chars()
            .chain(std::iter::repeat('0'))
            .take(6)
            .collect();
        micros = padded.parse().map_err(|_| bad())?;
        rest = &frac[digits.len()..];
    }
    let offset_s = match rest {
        "" | "Z" | "z" => 0,
        o if (o.starts_with('+') || o.starts_with('-')) && o.len() == 6 && &o[3..4] == ":" => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let oh: i64 = o[1..3].parse().map_err(|_| bad())?;
            let om: i64 = o[4..6].parse().map_err(|_| bad())?;
            sign * (oh * 3600 + om * 60)
        }
        _ => return Err(bad()),
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset_s;
    if secs < 0 {
        return Err(TimeError::BeforeEpoch {
            input: s.to_owned(),
        });
    }
    Ok(secs as u64 * 1_000_000 + micros as u64)
}

/// Why a text is not a point in time [`parse`] accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimeError {
    /// Neither RFC 3339 nor a whole number of microseconds that fits in 64 bits.
    #[error(
        "{input:?} is not a time: write RFC 3339 (2026-12-06T03:15:00Z) or microseconds since the Unix epoch"
    )]
    NotATime {
        /// The text as given.
        input: String,
    },
    /// A valid time before the Unix epoch, which the log cannot hold.
    #[error("{input:?} is before 1970")]
    BeforeEpoch {
        /// The text as given.
        input: String,
    },
}

/// RFC 3339 in UTC with microseconds.
pub fn format(us: u64) -> String {
    let secs = (us / 1_000_000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        us % 1_000_000
    )
}

// Howard Hinnant's days-from-civil and civil-from-days algorithms.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}
