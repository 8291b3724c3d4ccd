//! Wall-clock timestamps as RFC 3339 text (UTC), without a date-time crate: the few places that
//! stamp times (image `created`, container logs and state) need formatting, and `logs
//! --since/--until` parse an instant the way Docker takes one.

use std::time::{SystemTime, UNIX_EPOCH};

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(secs: i64) -> String {
    let (date, rem) = civil(secs);
    format!(
        "{date}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Now, to the nanosecond (`2026-11-28T03:13:01.123456789Z`, as Docker's logs stamp lines).
pub fn now_rfc3339_nanos() -> String {
    let (secs, nanos) = now_nanos();
    rfc3339_nanos(secs, nanos)
}

/// Now, as seconds since the epoch and nanoseconds.
pub fn now_nanos() -> (i64, u32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos())
}

/// An instant as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`: nine digits always (Docker's
/// `RFC3339NanoFixed`), so two such strings compare as their instants do.
pub fn rfc3339_nanos(secs: i64, nanos: u32) -> String {
    let (date, rem) = civil(secs);
    format!(
        "{date}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
    )
}

/// An instant as `docker logs --since/--until` take one, relative to `now`: a duration back
/// from now (`10m`, `1h30m`, `1.5s`, `250ms`), seconds since the epoch (`1700000000.5`), or
/// RFC 3339 (`2026-01-02T13:23:37Z`, `…+01:00`, fractions allowed). A date or date-time
/// without a zone is read as UTC (Docker reads the laptop's local zone).
pub fn parse_instant(s: &str, now: (i64, u32)) -> Result<(i64, u32), String> {
    let bad = || {
        format!(
            "`{s}` is not a time: use RFC 3339 (`2026-01-02T13:23:37Z`), seconds since the epoch, or a duration back from now (`10m`, `1h30m`)"
        )
    };
    let s = s.trim();
    if s.is_empty() {
        return Err(bad());
    }
    if let Some(nanos) = parse_duration_nanos(s) {
        let now_ns = i128::from(now.0) * 1_000_000_000 + i128::from(now.1);
        let t = now_ns - nanos;
        return Ok((
            t.div_euclid(1_000_000_000) as i64,
            t.rem_euclid(1_000_000_000) as u32,
        ));
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        let secs = whole.parse::<i64>().map_err(|_| bad())?;
        return Ok((secs, fraction_nanos(frac).ok_or_else(bad)?));
    }
    parse_rfc3339(s).ok_or_else(bad)
}

/// A Go-style duration (`1h30m`, `10m`, `1.5s`, `250ms`, `2us`, `10ns`) in nanoseconds.
fn parse_duration_nanos(s: &str) -> Option<i128> {
    let mut total: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&n| n > 0)?;
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3.6e12,
            "m" => 6e10,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Some(total as i128)
}

/// `.123` (the digits after the point) as nanoseconds; at most nine digits.
fn fraction_nanos(frac: &str) -> Option<u32> {
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(format!("{frac:0<9}").parse().unwrap_or(0))
}

/// `YYYY-MM-DD[(T| )HH:MM:SS[.frac]][Z|±HH:MM]`.
fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    let num = |t: &str| -> Option<i64> {
        t.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| t.parse().ok())
            .flatten()
    };
    let (date, time) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    };
    let d: Vec<&str> = date.split('-').collect();
    if d.len() != 3 || d[0].len() != 4 || d[1].len() != 2 || d[2].len() != 2 {
        return None;
    }
    let (y, m, day) = (num(d[0])?, num(d[1])?, num(d[2])?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let mut secs = days_from_civil(y, m, day) * 86_400;
    if time.is_empty() {
        return Some((secs, 0));
    }
    let (clock, offset) = match time.find(['Z', 'z', '+', '-']) {
        Some(i) => (&time[..i], &time[i..]),
        None => (time, ""),
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let t: Vec<&str> = hms.split(':').collect();
    if t.len() != 3 || t.iter().any(|p| p.len() != 2) {
        return None;
    }
    let (h, mi, se) = (num(t[0])?, num(t[1])?, num(t[2])?);
    if h > 23 || mi > 59 || se > 60 {
        return None;
    }
    secs += h * 3600 + mi * 60 + se;
    let nanos = fraction_nanos(frac)?;
    match offset {
        "" | "Z" | "z" => {}
        o => {
            let sign = if o.starts_with('-') { 1 } else { -1 };
            let (oh, om) = o[1..].split_once(':')?;
            if oh.len() != 2 || om.len() != 2 {
                return None;
            }
            secs += sign * (num(oh)? * 3600 + num(om)? * 60);
        }
    }
    Some((secs, nanos))
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm, inverse of [`civil`]).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the epoch, now.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The civil date of `secs` and the seconds into that day (Howard Hinnant's algorithm).
fn civil(secs: i64) -> (String, i64) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (format!("{y:04}-{m:02}-{d:02}"), rem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_835_581), "2026-11-28T03:13:01Z");
        assert_eq!(now_rfc3339_nanos().len(), 30);
        assert_eq!(rfc3339_nanos(1, 5), "1970-01-01T00:00:01.000000005Z");
    }

    #[test]
    fn parses_instants_as_docker_logs_takes_them() {
        let now = (1_795_835_581, 500_000_000);
        let at = |s: &str| parse_instant(s, now).map(|(a, b)| rfc3339_nanos(a, b));
        assert_eq!(at("10m").unwrap(), "2026-11-28T03:03:01.500000000Z");
        assert_eq!(at("1h30m").unwrap(), "2026-11-28T01:43:01.500000000Z");
        assert_eq!(at("1.5s").unwrap(), "2026-11-28T03:13:00.000000000Z");
        assert_eq!(at("250ms").unwrap(), "2026-11-28T03:13:01.250000000Z");
        assert_eq!(at("1795835581").unwrap(), "2026-11-28T03:13:01.000000000Z");
        assert_eq!(
            at("1795835581.25").unwrap(),
            "2026-11-28T03:13:01.250000000Z"
        );
        assert_eq!(
            at("2026-11-28T03:13:01Z").unwrap(),
            "2026-11-28T03:13:01.000000000Z"
        );
        assert_eq!(
            at("2026-11-28T04:13:01.123456789+01:00").unwrap(),
            "2026-11-28T03:13:01.123456789Z"
        );
        assert_eq!(
            at("2000-02-29T00:00:00-00:30").unwrap(),
            "2000-02-29T00:30:00.000000000Z"
        );
        assert_eq!(at("2000-02-29").unwrap(), "2000-02-29T00:00:00.000000000Z");
        for bad in [
            "",
            "soon",
            "10x",
            "2026-13-01",
            "2026-11-28T25:00:00Z",
            "1.2.3",
        ] {
            assert!(parse_instant(bad, now).is_err(), "{bad}");
        }
        for secs in [0, 951_782_400, 1_795_835_581, -86_400] {
            let (date, _) = civil(secs);
            let p: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
            assert_eq!(
                days_from_civil(p[0], p[1], p[2]) * 86_400,
                secs - secs.rem_euclid(86_400)
            );
        }
    }
}
