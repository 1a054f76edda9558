//! Webhook deliveries: the `webhook_deliver` job (`jobs/webhook_deliver.toml`) POSTs a fixed
//! JSON body to a tenant's endpoint. A tenant chooses that endpoint, so it is treated as
//! hostile:
//!
//! - **Where it may go** ([`EndpointPolicy`]): only public addresses. Loopback, private,
//!   link-local (cloud metadata at 169.254.169.254), shared, multicast and reserved ranges are
//!   refused when the endpoint is registered and again at every delivery, after DNS resolution
//!   and by the resolver the connection uses, so a name that later resolves elsewhere (DNS
//!   rebinding) cannot reach them. A private deployment (and the tests' loopback receiver)
//!   allows ranges explicitly (`STEWARD_WEBHOOK_ALLOW`).
//! - **What comes back**: no redirects are followed, no proxy from the environment is used,
//!   and the answer's body is never read: a delivery records the status and the time taken.
//! - **Signature**: `X-Steward-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>"
//!   keyed with the tenant's secret>`. A receiver recomputes it and refuses a `t` more than
//!   [`REPLAY_WINDOW_SECS`] away from its clock, and deduplicates by `X-Steward-Delivery` (the
//!   body and the delivery id are the same on every retry; the timestamp is not). [`verify`]
//!   is that check.

use crate::queue::{JobContext, JobError, Registry};
use crate::secrets::SecretKey;
use crate::store::domain::TenantId;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-steward-signature";
/// The header carrying the delivery id.
pub const DELIVERY_HEADER: &str = "x-steward-delivery";
/// The header naming the event.
pub const EVENT_HEADER: &str = "x-steward-event";
/// How far a signature's timestamp may be from the receiver's clock.
pub const REPLAY_WINDOW_SECS: i64 = 300;

fn mac(secret: &str, at: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(at.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// `t=<at>,v1=<hex>`: the signature of `body` sent at `at` (unix seconds).
pub fn sign(secret: &str, body: &[u8], at: i64) -> String {
    format!(
        "t={at},v1={}",
        hex::encode(mac(secret, at, body).finalize().into_bytes())
    )
}

/// The receiver's check: does `header` sign `body` with `secret`, with a timestamp within
/// [`REPLAY_WINDOW_SECS`] of `now`? In constant time.
pub fn verify(secret: &str, body: &[u8], header: &str, now: i64) -> bool {
    let mut at = None;
    let mut signature = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => at = t.parse::<i64>().ok(),
            Some(("v1", v)) => signature = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(at), Some(signature)) = (at, signature) else {
        return false;
    };
    (now - at).abs() <= REPLAY_WINDOW_SECS && mac(secret, at, body).verify_slice(&signature).is_ok()
}

/// Which addresses webhooks may reach: public ones, and the ranges allowed explicitly.
#[derive(Debug, Clone, Default)]
pub struct EndpointPolicy {
    allowed: Vec<(IpAddr, u8)>,
}

impl EndpointPolicy {
    /// Public addresses and `ranges` (`10.0.0.0/8`, `::1/128`, or one address).
    pub fn allowing(ranges: &[String]) -> Result<Self, String> {
        let mut allowed = Vec::new();
        for range in ranges.iter().map(|r| r.trim()).filter(|r| !r.is_empty()) {
            let (addr, bits) = range.split_once('/').unwrap_or((range, ""));
            let bad = || {
                format!("webhook allow-list entry `{range}`: expected an address or a CIDR range")
            };
            let addr: IpAddr = addr.parse().map_err(|_| bad())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits = if bits.is_empty() {
                max
            } else {
                bits.parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(bad)?
            };
            allowed.push((addr, bits));
        }
        Ok(Self { allowed })
    }

    /// Whether a connection to `ip` is allowed.
    pub fn permits(&self, ip: IpAddr) -> bool {
        is_public(ip)
            || self
                .allowed
                .iter()
                .any(|(net, bits)| contains(*net, *bits, ip))
    }

    /// The registration check of an endpoint: an http(s) URL whose host is (or resolves
    /// only to) addresses this policy permits.
    pub async fn check_url(&self, url: &str) -> Result<(), String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("webhook url `{url}`: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!(
                "webhook url `{url}`: only http and https are allowed"
            ));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(format!(
                "webhook url `{url}`: credentials in the URL are not allowed"
            ));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| format!("webhook url `{url}` names no host"))?;
        let port = parsed.port_or_known_default().unwrap_or(443);
        let addrs: Vec<SocketAddr> = match literal_ip(&parsed) {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| format!("webhook url `{url}`: cannot resolve `{host}`: {e}"))?
                .collect(),
        };
        match addrs.iter().find(|a| !self.permits(a.ip())) {
            Some(bad) => Err(format!(
                "webhook url `{url}` reaches {}, a loopback, private, link-local or reserved \
                 address (allow it with STEWARD_WEBHOOK_ALLOW for a private deployment)",
                bad.ip()
            )),
            None if addrs.is_empty() => {
                Err(format!("webhook url `{url}`: `{host}` has no address"))
            }
            None => Ok(()),
        }
    }
}

/// The IP a URL names literally, if it does.
fn literal_ip(url: &reqwest::Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

fn contains(net: IpAddr, bits: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// Whether `ip` is a globally routable unicast address.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let segments = v6.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let o = v6.octets();
                return is_public_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || segments[0] & 0xfe00 == 0xfc00 // unique local fc00::/7
                || segments[0] & 0xffc0 == 0xfe80 // link-local fe80::/10
                || segments[0] & 0xffc0 == 0xfec0 // site-local fec0::/10
                || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
                || v6 == Ipv6Addr::from(1u128))
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_unspecified()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240)
}

/// The resolver deliveries connect through: a name's addresses the policy forbids are
/// dropped, so the connection can only go where the check said.
struct PolicyResolver(EndpointPolicy);

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let permitted: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if permitted.is_empty() {
                return Err(
                    format!("`{host}` resolves only to addresses webhooks may not reach").into(),
                );
            }
            Ok(Box::new(permitted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The payload of a `webhook_deliver` job.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryArgs {
    pub delivery_id: String,
    pub tenant_id: TenantId,
    pub event: String,
    /// The exact bytes to send (and sign).
    pub body: String,
    /// The host of the tenant's endpoint when the delivery was queued: the key of the
    /// per-host rate and concurrency limits (`jobs/webhook_deliver.toml`).
    #[serde(default)]
    pub host: Option<String>,
}

/// How webhooks are sent.
#[derive(Clone)]
pub struct WebhookSender {
    client: reqwest::Client,
    policy: EndpointPolicy,
    /// Opens the tenants' sealed secrets (see [`crate::secrets`]).
    key: Option<Arc<SecretKey>>,
}

impl WebhookSender {
    /// A sender whose requests give up after `timeout` and go only where `policy` permits;
    /// `key` opens the secrets stored sealed.
    pub fn new(
        timeout: Duration,
        policy: EndpointPolicy,
        key: Option<SecretKey>,
    ) -> Result<Self, String> {
        let key = key.map(Arc::new);
        reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(256)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(PolicyResolver(policy.clone())))
            .build()
            .map(|client| Self {
                client,
                policy,
                key,
            })
            .map_err(|e| format!("cannot build the webhook HTTP client: {e}"))
    }

    async fn deliver(&self, args: DeliveryArgs, ctx: JobContext) -> Result<(), JobError> {
        let target = ctx
            .store
            .tenant_webhook(args.tenant_id)
            .await?
            .ok_or_else(|| {
                JobError::Fatal(format!(
                    "tenant {} has no webhook endpoint and secret",
                    args.tenant_id
                ))
            })?;
        let url = reqwest::Url::parse(&target.url)
            .map_err(|e| JobError::Fatal(format!("webhook url `{}`: {e}", target.url)))?;
        if let Some(ip) = literal_ip(&url).filter(|ip| !self.policy.permits(*ip)) {
            return Err(JobError::Fatal(format!(
                "webhook url `{}` names {ip}, an address webhooks may not reach",
                target.url
            )));
        }
        let secret = crate::secrets::open(self.key.as_deref(), &target.secret)
            .map_err(|e| JobError::Fatal(format!("tenant {}: {e}", args.tenant_id)))?;
        if let Some(key) = self.key.as_deref()
            && !crate::secrets::is_sealed(&target.secret)
        {
            // Stored plain before sealing existed: sealed now (once), so the database stops
            // holding it in the clear.
            // Only if it is still the secret read: an endpoint replaced meanwhile stays.
            let resealed = match key.seal(&secret) {
                Ok(sealed) => ctx
                    .store
                    .tenant_webhook_reseal(args.tenant_id, &target.secret, &sealed)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(error) = resealed {
                tracing::warn!(tenant = args.tenant_id, %error, "could not seal a plain webhook secret");
            }
        }
        let signature = sign(
            &secret,
            args.body.as_bytes(),
            chrono::Utc::now().timestamp(),
        );
        let started = Instant::now();
        let answer = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(DELIVERY_HEADER, &args.delivery_id)
            .header(EVENT_HEADER, &args.event)
            .header(SIGNATURE_HEADER, signature)
            .body(args.body)
            .send()
            .await
            .map_err(|e| {
                JobError::Retryable(format!("POST {}: {}", target.url, with_causes(&e)))
            })?;
        let status = answer.status();
        // The answer's body is never read: it could be large, and it is the endpoint's to
        // keep (only the status and the time taken are recorded).
        drop(answer);
        if status.is_success() {
            tracing::info!(
                tenant = args.tenant_id,
                delivery = %args.delivery_id,
                status = status.as_u16(),
                ms = started.elapsed().as_millis() as u64,
                "webhook delivered"
            );
            return Ok(());
        }
        Err(JobError::Retryable(format!(
            "POST {} answered {status} after {} ms",
            target.url,
            started.elapsed().as_millis()
        )))
    }
}

/// An error with the chain of its causes (reqwest's own text leaves out why a request could
/// not be sent: a refused address, a timeout).
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Register the `webhook_deliver` job handler.
pub fn register_jobs(registry: &mut Registry, sender: WebhookSender) {
    registry.register(
        "webhook_deliver",
        move |args: DeliveryArgs, ctx: JobContext| {
            let sender = sender.clone();
            async move { sender.deliver(args, ctx).await }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_same_secret_body_and_a_recent_time() {
        let now = 1_800_000_000;
        let sig = sign("s3cret", b"{\"a\":1}", now);
        assert!(sig.starts_with(&format!("t={now},v1=")));
        assert!(verify("s3cret", b"{\"a\":1}", &sig, now + 10));
        assert!(!verify("other", b"{\"a\":1}", &sig, now));
        assert!(!verify("s3cret", b"{\"a\":2}", &sig, now));
        assert!(!verify(
            "s3cret",
            b"{\"a\":1}",
            &sig,
            now + REPLAY_WINDOW_SECS + 1
        ));
        assert!(!verify("s3cret", b"{\"a\":1}", "t=1,v1=zz", 1));
        // A replayed signature with a forged recent timestamp does not verify.
        let forged = sig.replace(&format!("t={now}"), &format!("t={}", now + 3600));
        assert!(!verify("s3cret", b"{\"a\":1}", &forged, now + 3600));
    }

    #[test]
    fn only_public_addresses_unless_allowed() {
        let policy = EndpointPolicy::default();
        for forbidden in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!policy.permits(forbidden.parse().unwrap()), "{forbidden}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(policy.permits(public.parse().unwrap()), "{public}");
        }
        let allowed =
            EndpointPolicy::allowing(&["127.0.0.1/32".into(), "10.0.0.0/8".into()]).unwrap();
        assert!(allowed.permits("127.0.0.1".parse().unwrap()));
        assert!(allowed.permits("10.200.0.1".parse().unwrap()));
        assert!(!allowed.permits("127.0.0.2".parse().unwrap()));
        assert!(!allowed.permits("169.254.169.254".parse().unwrap()));
        assert!(EndpointPolicy::allowing(&["10.0.0.0/33".into()]).is_err());
        assert!(EndpointPolicy::allowing(&["not an ip".into()]).is_err());
    }

    #[tokio::test]
    async fn registration_refuses_private_endpoints_and_odd_urls() {
        let policy = EndpointPolicy::default();
        for url in [
            "http://127.0.0.1:5432/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://localhost:8080/hook",
            "ftp://example.com/",
            "http://user:pw@93.184.216.34/",
            "not a url",
        ] {
            assert!(policy.check_url(url).await.is_err(), "{url}");
        }
        assert!(policy.check_url("https://93.184.216.34/hook").await.is_ok());
    }
}
