//! Where a destination may send rows: HTTPS, and plain HTTP only to loopback
//! addresses (local tries). Checked when the configuration loads and again at request
//! time for URLs a destination learns later (Salesforce's `instance_url`).

use std::net::IpAddr;

/// Accepts `https://` URLs, and `http://` only for loopback hosts (local tries). The
/// host must be written: `https:///rows` and `https:rows` are refused (the URL parser
/// would read them as host `rows`).
pub fn check_endpoint_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("'{url}' is not a URL: {e}"))?;
    let authority = url.split_once("://").map(|(_, rest)| rest);
    let host_written = authority
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with(['/', '?', '#', '@', ':']));
    if !host_written || parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("'{url}' has no host; expected scheme://host/path"));
    }
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match parsed.host() {
                Some(url::Host::Domain(host)) => host.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
                Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err(format!(
                    "'{url}' must use https (plain http is accepted only for loopback addresses)"
                ))
            }
        }
        other => Err(format!("'{url}' has scheme '{other}'; expected https")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_everywhere_but_loopback() {
        assert!(check_endpoint_url("https://api.example.com/x").is_ok());
        assert!(check_endpoint_url("http://127.0.0.1:9000/x").is_ok());
        assert!(check_endpoint_url("http://localhost:9000/x").is_ok());
        assert!(check_endpoint_url("http://[::1]:9000/x").is_ok());
        assert!(check_endpoint_url("http://10.0.0.1/x").is_err());
        assert!(check_endpoint_url("http://example.com/x").is_err());
        assert!(check_endpoint_url("ftp://example.com/x").is_err());
        assert!(check_endpoint_url("not a url").is_err());
        assert!(check_endpoint_url("https:///rows").is_err());
        assert!(check_endpoint_url("https:rows").is_err());
    }
}
