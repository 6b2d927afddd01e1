//! API versions: a route set per version (`/v1`, `/v2`), each with a life. A deprecated
//! version's answers carry `Deprecation` (RFC 9745, `@` Unix seconds) and, when set,
//! `Sunset` (RFC 8594, an HTTP date) and `Link: <…>; rel="deprecation"`; after its
//! sunset the version answers 410 Gone.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::header::{HeaderName, HeaderValue};
use polycall_core::Status;

use crate::routes::VersionSpec;

/// One API version's life, ready to stamp answers.
#[derive(Debug, Clone)]
pub(crate) struct Version {
    pub(crate) name: String,
    pub(crate) deprecated: Option<SystemTime>,
    pub(crate) sunset: Option<SystemTime>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Version {
    /// A version that is neither deprecated nor retiring.
    pub(crate) fn current(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            deprecated: None,
            sunset: None,
            headers: Vec::new(),
        }
    }

    /// The version `name` as the routes file describes it.
    pub(crate) fn new(name: &str, spec: &VersionSpec) -> Result<Self, String> {
        let at = |field: &str, d: &Option<toml::value::Datetime>| {
            d.as_ref()
                .map(|d| instant(d).map_err(|e| format!("versions.{name}.{field}: {e}")))
                .transpose()
        };
        let deprecated = at("deprecated", &spec.deprecated)?;
        let sunset = at("sunset", &spec.sunset)?;
        if let (Some(d), Some(s)) = (deprecated, sunset)
            && s < d
        {
            return Err(format!(
                "versions.{name}: the sunset comes before the deprecation"
            ));
        }
        let mut headers = Vec::new();
        if let Some(d) = deprecated {
            let secs = d.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            headers.push((
                HeaderName::from_static("deprecation"),
                HeaderValue::try_from(format!("@{secs}")).expect("digits are a header value"),
            ));
        }
        if let Some(s) = sunset {
            headers.push((
                HeaderName::from_static("sunset"),
                HeaderValue::try_from(httpdate::fmt_http_date(s))
                    .expect("an HTTP date is a header value"),
            ));
        }
        if let Some(link) = &spec.link {
            let value = HeaderValue::try_from(format!("<{link}>; rel=\"deprecation\""))
                .map_err(|_| format!("versions.{name}.link {link:?} is not a header value"))?;
            headers.push((hyper::header::LINK, value));
        }
        Ok(Self {
            name: name.to_owned(),
            deprecated,
            sunset,
            headers,
        })
    }

    /// The headers every answer of this version carries.
    pub(crate) fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }

    /// `Some(410 status)` once the sunset has passed.
    pub(crate) fn retired(&self, now: SystemTime) -> Option<Status> {
        let sunset = self.sunset?;
        (now >= sunset).then(|| {
            Status::not_found(format!(
                "API version {} was retired on {}{}",
                self.name,
                httpdate::fmt_http_date(sunset),
                if self.headers.iter().any(|(n, _)| n == hyper::header::LINK) {
                    " (see the Link header)"
                } else {
                    ""
                }
            ))
        })
    }

    /// Deprecated at or before `now`, or announced to be.
    pub(crate) fn is_deprecated(&self) -> bool {
        self.deprecated.is_some()
    }
}

/// A TOML date-time (or date) as an instant; a date-time without an offset is UTC.
fn instant(d: &toml::value::Datetime) -> Result<SystemTime, String> {
    let date = d
        .date
        .ok_or_else(|| format!("{d} has no date: write 2027-06-30 or 2027-06-30T00:00:00Z"))?;
    let days = days_from_civil(i64::from(date.year), date.month.into(), date.day.into());
    let mut secs = days * 86_400;
    if let Some(t) = d.time {
        secs +=
            i64::from(t.hour) * 3600 + i64::from(t.minute) * 60 + i64::from(t.second.unwrap_or(0));
    }
    if let Some(toml::value::Offset::Custom { minutes }) = d.offset {
        secs -= i64::from(minutes) * 60;
    }
    let secs = u64::try_from(secs).map_err(|_| format!("{d} is before 1970"))?;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> VersionSpec {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn dates_become_the_headers_of_their_rfcs() {
        let v = Version::new(
            "v1",
            &spec("deprecated = 2026-11-01T00:00:00Z\nsunset = 2027-06-30\nlink = \"https://example.org/v2\""),
        )
        .unwrap();
        let h: Vec<(String, String)> = v
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        assert_eq!(
            h,
            [
                ("deprecation".to_owned(), "@1793491200".to_owned()),
                (
                    "sunset".to_owned(),
                    "Wed, 30 Jun 2027 00:00:00 GMT".to_owned()
                ),
                (
                    "link".to_owned(),
                    "<https://example.org/v2>; rel=\"deprecation\"".to_owned()
                ),
            ]
        );
        assert!(v.retired(SystemTime::now()).is_none() || SystemTime::now() > v.sunset.unwrap());
        let gone = v
            .retired(UNIX_EPOCH + Duration::from_secs(1_814_313_600))
            .unwrap();
        assert!(
            gone.message.contains("retired on Wed, 30 Jun 2027"),
            "{gone}"
        );
    }

    #[test]
    fn offsets_count_and_nonsense_is_refused() {
        let v = Version::new("v1", &spec("sunset = 2027-06-30T02:00:00+02:00")).unwrap();
        assert_eq!(
            v.sunset
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            1_814_313_600
        );
        assert!(Version::new("v1", &spec("sunset = 12:00:00")).is_err());
        assert!(
            Version::new("v1", &spec("deprecated = 2027-01-02\nsunset = 2027-01-01"))
                .unwrap_err()
                .contains("before the deprecation")
        );
    }
}
