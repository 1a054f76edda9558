//! Deprecation webhooks (SPEC §4.2.5). A module moved to DEPRECATED or RETIRED
//! ([`Lifecycle::set_maturity`](super::Lifecycle::set_maturity)) starts a `module_deprecation`
//! run (`workflows/module_deprecation.toml`):
//!
//! - `deprecation.notify` fans out one `webhook_deliver` job per impacted tenant (every tenant
//!   holding the module, but ARCHIVED ones). The body is fixed in the job, so each retry
//!   sends the same bytes with the same delivery id: a receiver deduplicates by that id.
//! - `deprecation.apply` runs once every delivery ended (delivered or dead-lettered): on
//!   RETIRED, a tenant that had already turned the module off (SUSPENDED, PENDING_APPROVAL,
//!   ERROR) becomes DISABLED, and, when the retirement is forced by policy, a tenant still
//!   using it (ENABLED, UP_TO_DATE) becomes SUSPENDED. DEPRECATED only notifies.
//!
//! A delivery (`webhook_deliver`, `jobs/webhook_deliver.toml`) POSTs the JSON body to the
//! tenant's endpoint with `X-Steward-Delivery: <id>`, `X-Steward-Event` and
//! `X-Steward-Signature: sha256=<hex HMAC-SHA256 of the body with the tenant's secret>`,
//! within a timeout. A 2xx answer delivers it; anything else is retried with the kind's
//! backoff, and after its last attempt the job is dead-lettered with the last answer.

use crate::domain::maturity::Maturity;
use crate::domain::status::TenantModuleStatus;
use crate::queue::{JobContext, JobError, Registry};
use crate::store::domain::{StatusChange, TenantId};
use crate::workflow::{StepContext, StepFuture, StepRegistry};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;
use std::time::Duration;

const ACTOR: &str = "workflow:module_deprecation";

/// The header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "x-steward-signature";
/// The header carrying the delivery id.
pub const DELIVERY_HEADER: &str = "x-steward-delivery";
/// The header naming the event.
pub const EVENT_HEADER: &str = "x-steward-event";

/// `sha256=<hex>`: the HMAC-SHA256 of `body` keyed with `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Does `signature` (a header value) sign `body` with `secret`? In constant time.
pub fn verify(secret: &str, body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

fn fatal(e: impl std::fmt::Display) -> JobError {
    JobError::Fatal(e.to_string())
}

fn maturity_param(ctx: &StepContext<'_>) -> Result<Maturity, JobError> {
    ctx.params["maturity"]
        .as_str()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| fatal("parameter maturity must be DEPRECATED or RETIRED"))
}

fn module_param<'a>(ctx: &'a StepContext<'_>) -> Result<&'a str, JobError> {
    ctx.params["module"]
        .as_str()
        .ok_or_else(|| fatal("parameter module must be a module slug"))
}

fn forced(ctx: &StepContext<'_>) -> bool {
    ctx.params["force"] == json!(true) || ctx.params["force"] == json!("true")
}

/// What RETIRED does to a tenant module in `status` (`None`: nothing).
pub fn retirement_effect(status: TenantModuleStatus, force: bool) -> Option<TenantModuleStatus> {
    use TenantModuleStatus::*;
    match status {
        Suspended | PendingApproval | Error => Some(Disabled),
        Enabled | UpToDate if force => Some(Suspended),
        _ => None,
    }
}

/// `deprecation.notify`: one delivery job per impacted tenant.
fn notify(mut ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move {
        let module = module_param(&ctx)?.to_string();
        let maturity = maturity_param(&ctx)?;
        let force = forced(&ctx);
        let record = ctx
            .store()
            .module_get(&module)
            .await?
            .ok_or_else(|| fatal(format!("no module `{module}`")))?;
        let event = match maturity {
            Maturity::Retired => "module.retired",
            _ => "module.deprecated",
        };
        let occurred_at = chrono::Utc::now().to_rfc3339();
        let mut deliveries = Vec::new();
        for tm in ctx.store().module_tenants(&module).await? {
            if tm.status == TenantModuleStatus::Archived {
                continue;
            }
            let delivery_id = format!("run{}-tenant{}", ctx.run_id, tm.tenant_id);
            let effect = match maturity {
                Maturity::Retired => retirement_effect(tm.status, force),
                _ => None,
            };
            let body = json!({
                "event": event,
                "delivery_id": delivery_id,
                "tenant_id": tm.tenant_id,
                "module": module,
                "maturity": maturity.to_string(),
                "successor": record.successor,
                "sunset_date": record.sunset_date,
                "tenant_status": tm.status.to_string(),
                "new_status": effect.map(|s| s.to_string()),
                "occurred_at": occurred_at,
            });
            deliveries.push((
                tm.tenant_id.to_string(),
                json!({"delivery_id": delivery_id, "tenant_id": tm.tenant_id,
                       "event": event, "body": body.to_string()}),
            ));
        }
        let count = ctx.fan_out("webhook_deliver", deliveries).await?;
        Ok(json!({"module": module, "maturity": maturity.to_string(), "deliveries": count}))
    })
}

/// `deprecation.apply`: RETIRED's effect on every tenant of the module.
fn apply(mut ctx: StepContext<'_>) -> StepFuture<'_> {
    Box::pin(async move {
        let mut output = ctx.input.clone();
        if maturity_param(&ctx)? != Maturity::Retired {
            output["changed"] = json!(0);
            return Ok(output);
        }
        let module = module_param(&ctx)?.to_string();
        let force = forced(&ctx);
        let tenants: Vec<(TenantId, TenantModuleStatus, TenantModuleStatus)> = ctx
            .store()
            .module_tenants(&module)
            .await?
            .into_iter()
            .filter_map(|tm| {
                retirement_effect(tm.status, force).map(|to| (tm.tenant_id, tm.status, to))
            })
            .collect();
        let reason = if force {
            "the module was retired by policy"
        } else {
            "the module was retired"
        };
        let tx = ctx.tx().await?;
        for (tenant_id, from, to) in &tenants {
            tx.tenant_module_move(
                &StatusChange::new(
                    *tenant_id,
                    &module,
                    Some(*from),
                    *to,
                    ACTOR,
                    "module.retire",
                )
                .because(reason),
            )
            .await?;
        }
        output["changed"] = json!(tenants.len());
        Ok(output)
    })
}

/// Register the deprecation steps.
pub fn register(steps: &mut StepRegistry) {
    steps.register("deprecation.notify", notify);
    steps.register("deprecation.apply", apply);
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
}

/// How webhooks are sent.
#[derive(Clone)]
pub struct WebhookSender {
    client: reqwest::Client,
}

impl WebhookSender {
    /// A sender whose requests give up after `timeout`.
    pub fn new(timeout: Duration) -> Result<Self, String> {
        reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(256)
            .build()
            .map(|client| Self { client })
            .map_err(|e| format!("cannot build the webhook HTTP client: {e}"))
    }

    async fn deliver(&self, args: DeliveryArgs, ctx: JobContext) -> Result<(), JobError> {
        let target = ctx
            .store
            .tenant_webhook(args.tenant_id)
            .await?
            .ok_or_else(|| {
                fatal(format!(
                    "tenant {} has no webhook endpoint and secret",
                    args.tenant_id
                ))
            })?;
        let signature = sign(&target.secret, args.body.as_bytes());
        let answer = self
            .client
            .post(&target.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(DELIVERY_HEADER, &args.delivery_id)
            .header(EVENT_HEADER, &args.event)
            .header(SIGNATURE_HEADER, signature)
            .body(args.body)
            .send()
            .await
            .map_err(|e| JobError::Retryable(format!("POST {}: {e}", target.url)))?;
        let status = answer.status();
        if status.is_success() {
            return Ok(());
        }
        let text = answer.text().await.unwrap_or_default();
        let text: String = text.chars().take(200).collect();
        Err(JobError::Retryable(format!(
            "POST {} answered {status}: {text}",
            target.url
        )))
    }
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
    fn signatures_verify_only_with_the_same_secret_and_body() {
        let sig = sign("s3cret", b"{\"a\":1}");
        assert!(sig.starts_with("sha256="));
        assert!(verify("s3cret", b"{\"a\":1}", &sig));
        assert!(!verify("other", b"{\"a\":1}", &sig));
        assert!(!verify("s3cret", b"{\"a\":2}", &sig));
        assert!(!verify("s3cret", b"{\"a\":1}", "sha256=zz"));
    }

    #[test]
    fn retirement_disables_unused_and_suspends_used_only_when_forced() {
        use TenantModuleStatus::*;
        assert_eq!(retirement_effect(Suspended, false), Some(Disabled));
        assert_eq!(retirement_effect(Enabled, false), None);
        assert_eq!(retirement_effect(Enabled, true), Some(Suspended));
        assert_eq!(retirement_effect(UpToDate, true), Some(Suspended));
        assert_eq!(retirement_effect(Disabled, true), None);
        assert_eq!(retirement_effect(Archived, true), None);
        for status in [Suspended, PendingApproval, Error, Enabled, UpToDate] {
            if let Some(to) = retirement_effect(status, true) {
                assert!(
                    status.check_move(to).is_ok(),
                    "{status} → {to} must be allowed"
                );
            }
        }
    }
}
