//! The HTTP client of ADD URL: one GET, verified against `--checksum`, with its name and mtime
//! from the URL and `Last-Modified`.

use super::copy::InlineFile;
use super::*;

/// Downloads an ADD URL: verified against `--checksum` when given, named after the last path
/// segment (`__unnamed__` when there is none), mode 0600, mtime from `Last-Modified`.
pub(super) fn fetch_url(url: &str, checksum: Option<&str>) -> Result<InlineFile, String> {
    let want = checksum
        .map(|c| c.parse::<Digest>().map_err(|e| format!("--checksum: {e}")))
        .transpose()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (bytes, last_modified) = rt.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .user_agent(format!("dts/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("the server answered {}", resp.status()));
        }
        let lm = resp
            .headers()
            .get(reqwest::header::LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date);
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((body.to_vec(), lm))
    })?;
    let got = Digest::of(&bytes);
    if let Some(want) = want
        && got != want
    {
        return Err(format!(
            "checksum mismatch: expected {want}, downloaded {got}"
        ));
    }
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .splitn(4, '/')
        .nth(3)
        .unwrap_or("");
    let name = path
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .unwrap_or("__unnamed__")
        .to_string();
    Ok(InlineFile {
        name,
        bytes,
        mode: 0o600,
        mtime: last_modified,
    })
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110 IMF-fixdate) → seconds since the epoch.
pub(super) fn parse_http_date(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = months.iter().position(|x| x == month)? as i64 + 1;
    let (d, y): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let t: Vec<i64> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [hh, mm, ss] = t.as_slice() else {
        return None;
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}
