//! URL import: download a job's MP4 from the web, safely (and call webhooks the same way).
//!
//! Only `http`/`https`. Every hop (the URL and each of at most 3 redirects) is resolved by
//! us, every address checked by [`guard`], and the connection pinned to the checked
//! addresses, so a name cannot resolve to a public address for the check and a private one
//! for the connection. Hosts on the configured allow-list skip the address check (tests,
//! intranets). Connect and read timeouts, and the upload size cap, apply.

pub mod guard;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use url::Url;

/// Redirects followed at most.
pub const MAX_REDIRECTS: usize = 3;

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Not a usable http(s) URL.
    #[error("invalid URL: {0}")]
    BadUrl(String),
    /// The URL leads somewhere the service must not go.
    #[error("refused URL: {0}")]
    Forbidden(String),
    /// The file is larger than the cap.
    #[error("the file is larger than the limit of {0} bytes")]
    TooLarge(u64),
    /// The server could not be reached or answered with an error.
    #[error("download failed: {0}")]
    Failed(String),
    /// Writing the file failed.
    #[error("cannot store the download: {0}")]
    Io(#[from] std::io::Error),
}

impl FetchError {
    /// The machine-readable code a job fails with.
    pub fn code(&self) -> &'static str {
        match self {
            FetchError::BadUrl(_) => "invalid_url",
            FetchError::Forbidden(_) => "forbidden_url",
            FetchError::TooLarge(_) => "too_large",
            FetchError::Failed(_) => "fetch_failed",
            FetchError::Io(_) => "io_error",
        }
    }
}

/// Downloads with the service's limits.
#[derive(Debug, Clone)]
pub struct Fetcher {
    allow_hosts: Vec<String>,
    max_bytes: u64,
    connect_timeout: Duration,
    read_timeout: Duration,
}

impl Fetcher {
    /// A fetcher; `allow_hosts` are lower-case host names or IPs exempt from the address check.
    pub fn new(allow_hosts: Vec<String>, max_bytes: u64, connect_timeout: Duration, read_timeout: Duration) -> Self {
        Fetcher {
            allow_hosts,
            max_bytes,
            connect_timeout,
            read_timeout,
        }
    }

    /// The fetcher the configuration describes (allow-list, size cap, timeouts).
    pub fn from_config(config: &crate::config::Config) -> Self {
        Fetcher::new(
            config.fetch_allow_hosts.clone(),
            config.max_upload_bytes,
            config.fetch_connect_timeout,
            config.fetch_read_timeout,
        )
    }

    /// Parses a user's URL: http or https, with a host, no credentials.
    pub fn parse(&self, raw: &str) -> Result<Url, FetchError> {
        let url = Url::parse(raw.trim()).map_err(|e| FetchError::BadUrl(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::BadUrl(format!(
                "scheme {:?} is not http or https",
                url.scheme()
            )));
        }
        if url.host().is_none() {
            return Err(FetchError::BadUrl("no host".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(FetchError::BadUrl("credentials in URLs are not accepted".into()));
        }
        Ok(url)
    }

    fn allowed(&self, url: &Url) -> bool {
        let host = url
            .host_str()
            .unwrap_or("")
            .trim_matches(|c| c == '[' || c == ']')
            .to_ascii_lowercase();
        self.allow_hosts
            .iter()
            .any(|h| h.trim_matches(|c| c == '[' || c == ']') == host)
    }

    /// Resolves `url`'s host and checks every address. Returns the addresses to connect to
    /// (empty for an IP literal, which needs no resolution).
    pub async fn check(&self, url: &Url) -> Result<Vec<SocketAddr>, FetchError> {
        let port = url.port_or_known_default().unwrap_or(80);
        let allowed = self.allowed(url);
        let literal: Option<IpAddr> = match url.host() {
            Some(url::Host::Ipv4(v4)) => Some(v4.into()),
            Some(url::Host::Ipv6(v6)) => Some(v6.into()),
            Some(url::Host::Domain(_)) => None,
            None => return Err(FetchError::BadUrl("no host".into())),
        };
        if let Some(ip) = literal {
            return match guard::forbidden_reason(ip) {
                Some(reason) if !allowed => Err(FetchError::Forbidden(format!("{ip} is {reason}"))),
                _ => Ok(Vec::new()),
            };
        }
        let host = url.host_str().unwrap_or_default().to_string();
        let addrs: Vec<SocketAddr> =
            tokio::time::timeout(self.connect_timeout, tokio::net::lookup_host((host.as_str(), port)))
                .await
                .map_err(|_| FetchError::Failed(format!("resolving {host} timed out")))?
                .map_err(|e| FetchError::Failed(format!("cannot resolve {host}: {e}")))?
                .collect();
        if addrs.is_empty() {
            return Err(FetchError::Failed(format!("{host} has no addresses")));
        }
        if !allowed {
            for addr in &addrs {
                if let Some(reason) = guard::forbidden_reason(addr.ip()) {
                    // What it resolves to is internal knowledge: logged, never told (the
                    // message reaches the user at registration and in a job's error).
                    tracing::warn!(%host, address = %addr.ip(), reason, "refused a URL whose host is not public");
                    return Err(FetchError::Forbidden(format!("{host} is not a public address")));
                }
            }
        }
        Ok(addrs)
    }

    fn client_for(&self, url: &Url, addrs: &[SocketAddr]) -> Result<reqwest::Client, FetchError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout)
            .user_agent(concat!("mp4tomp3/", env!("CARGO_PKG_VERSION")));
        if let (Some(host), false) = (url.host_str(), addrs.is_empty()) {
            builder = builder.resolve_to_addrs(host, addrs);
        }
        builder.build().map_err(|e| FetchError::Failed(e.to_string()))
    }

    /// One `POST` of `body` to `url` (a webhook call): the address checked and pinned as
    /// for a download, no redirects followed, the whole call bounded by `timeout`. Returns
    /// the answer's status.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<u16, FetchError> {
        let url = self.parse(url)?;
        let addrs = self.check(&url).await?;
        let client = self.client_for(&url, &addrs)?;
        let mut request = client.post(url).timeout(timeout).body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.map_err(|e| FetchError::Failed(describe(&e)))?;
        Ok(response.status().as_u16())
    }

    /// Downloads `url` into `dest` (created; fsynced at the end). Returns the byte count.
    pub async fn download(&self, url: &str, dest: &Path) -> Result<u64, FetchError> {
        let mut url = self.parse(url)?;
        let mut hops = 0;
        let response = loop {
            let addrs = self.check(&url).await?;
            let client = self.client_for(&url, &addrs)?;
            let response = client
                .get(url.clone())
                .send()
                .await
                .map_err(|e| FetchError::Failed(describe(&e)))?;
            if response.status().is_redirection() {
                hops += 1;
                if hops > MAX_REDIRECTS {
                    return Err(FetchError::Failed(format!("more than {MAX_REDIRECTS} redirects")));
                }
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| FetchError::Failed("redirect without a Location".into()))?;
                let next = url.join(location).map_err(|e| FetchError::BadUrl(e.to_string()))?;
                url = self.parse(next.as_str())?;
                continue;
            }
            if !response.status().is_success() {
                return Err(FetchError::Failed(format!("the server answered {}", response.status())));
            }
            break response;
        };
        if response.content_length().is_some_and(|n| n > self.max_bytes) {
            return Err(FetchError::TooLarge(self.max_bytes));
        }
        let mut file = tokio::fs::File::create(dest).await?;
        let mut written = 0u64;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| FetchError::Failed(describe(&e)))?;
            written += chunk.len() as u64;
            if written > self.max_bytes {
                return Err(FetchError::TooLarge(self.max_bytes));
            }
            file.write_all(&chunk).await?;
        }
        file.sync_all().await?;
        Ok(written)
    }
}

/// reqwest's message plus its innermost cause (e.g. "connection refused").
fn describe(e: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(inner) = source.source() {
        source = inner;
    }
    if std::ptr::addr_eq(source, e as &dyn std::error::Error) {
        e.to_string()
    } else {
        format!("{e}: {source}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetcher(allow: &[&str]) -> Fetcher {
        Fetcher::new(
            allow.iter().map(|s| s.to_string()).collect(),
            1 << 20,
            Duration::from_secs(2),
            Duration::from_secs(2),
        )
    }

    #[test]
    fn only_plain_http_urls_without_credentials_parse() {
        let f = fetcher(&[]);
        assert!(f.parse("https://example.com/a.mp4").is_ok());
        for bad in [
            "ftp://example.com/a",
            "file:///etc/passwd",
            "gopher://x",
            "http://user:pw@example.com/",
            "not a url",
            "http://",
        ] {
            assert!(matches!(f.parse(bad), Err(FetchError::BadUrl(_))), "{bad}");
        }
    }

    #[tokio::test]
    async fn literal_addresses_are_checked_without_resolving_or_connecting() {
        let f = fetcher(&[]);
        for url in [
            "http://10.1.2.3/",
            "http://172.20.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest",
            "http://100.64.1.1/",
            "http://[fc00::1]/",
            "http://[fe80::1]/",
            "http://[ff02::1]/",
            "http://224.0.0.251/",
            "http://0x0a000001/",
        ] {
            let url = f.parse(url).unwrap();
            assert!(matches!(f.check(&url).await, Err(FetchError::Forbidden(_))), "{url}");
        }
        // The allow-list exempts a named host (here a literal, as tests use).
        let allowed = fetcher(&["10.1.2.3"]);
        assert!(allowed.check(&allowed.parse("http://10.1.2.3/").unwrap()).await.is_ok());
    }
}
