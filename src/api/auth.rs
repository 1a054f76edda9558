//! Bearer JWT (HS256) authentication and role checks.
//!
//! Roles: `master_admin` (everything), `service` (the platform: start runs, enqueue, read) and
//! `tenant_admin` (only its own `tenant_id`). A token comes in `Authorization: Bearer …`, or,
//! for the dashboard, in the `steward_token` cookie. `steward token` mints one.

use super::AppState;
use super::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Who may do what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[value(name = "master_admin")]
    MasterAdmin,
    #[value(name = "tenant_admin")]
    TenantAdmin,
    Service,
}

/// The claims steward signs and checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    /// The tenant of a `tenant_admin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<i64>,
    pub iat: i64,
    pub exp: i64,
    /// Not valid before this time (checked when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
}

/// The HS256 keys of one secret.
#[derive(Clone)]
pub struct AuthKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// The name of the dashboard's cookie.
pub const COOKIE: &str = "steward_token";

impl AuthKeys {
    /// Keys from a secret of at least 32 bytes.
    pub fn new(secret: &str) -> Result<Self, String> {
        if secret.len() < 32 {
            return Err("the JWT secret (STEWARD_JWT_SECRET) must be at least 32 bytes".into());
        }
        let bad = |e: jsonwebtoken::errors::Error| format!("unusable JWT secret: {e}");
        Ok(Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()).map_err(bad)?,
            decoding: DecodingKey::from_secret(secret.as_bytes()).map_err(bad)?,
        })
    }

    /// A token for `role` (a `tenant_admin` needs its tenant) valid for `ttl`.
    pub fn mint(
        &self,
        sub: &str,
        role: Role,
        tenant_id: Option<i64>,
        ttl: chrono::Duration,
    ) -> Result<String, String> {
        if (role == Role::TenantAdmin) != tenant_id.is_some() {
            return Err("a tenant_admin token needs --tenant, and only it".into());
        }
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: sub.to_string(),
            role,
            tenant_id,
            iat: now,
            exp: now + ttl.num_seconds(),
            nbf: None,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| format!("cannot sign the token: {e}"))
    }

    /// The claims of a token signed with these keys: not expired, not before its `nbf`, not
    /// issued in the future, and shaped for its role (a `tenant_admin` names its tenant, no
    /// other role does).
    pub fn check(&self, token: &str) -> Result<Claims, ApiError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    ApiError::unauthenticated("the token has expired")
                }
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                    ApiError::unauthenticated("the token is not valid yet (nbf)")
                }
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    ApiError::unauthenticated("the token's signature is not valid")
                }
                _ => ApiError::unauthenticated(format!("the token is not valid: {e}")),
            })?;
        // A clock a little ahead on the issuer's side is tolerated; a token from the future is not.
        if claims.iat > chrono::Utc::now().timestamp() + IAT_SKEW_SECS {
            return Err(ApiError::unauthenticated(
                "the token is issued in the future (iat)",
            ));
        }
        if (claims.role == Role::TenantAdmin) != claims.tenant_id.is_some() {
            return Err(ApiError::unauthenticated(
                "a tenant_admin token must name its tenant_id, and no other role's may",
            ));
        }
        Ok(claims)
    }
}

/// How far in the future a token's `iat` may be (clock skew between issuer and steward).
const IAT_SKEW_SECS: i64 = 60;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller(pub Claims);

impl Caller {
    /// Operators' actions (retry, discard, cancel, bulk, catalog): master_admin, or a
    /// tenant_admin on its own tenant's work.
    pub fn may_operate(&self, tenant: Option<i64>) -> Result<(), ApiError> {
        match self.0.role {
            Role::MasterAdmin => Ok(()),
            Role::TenantAdmin if tenant.is_some() && tenant == self.0.tenant_id => Ok(()),
            _ => Err(ApiError::forbidden(format!(
                "a {} may not do this",
                serde_json::to_value(self.0.role)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            ))),
        }
    }

    /// Reading a tenant's data: anyone but another tenant's admin.
    pub fn may_read(&self, tenant: Option<i64>) -> Result<(), ApiError> {
        match self.0.role {
            Role::MasterAdmin | Role::Service => Ok(()),
            Role::TenantAdmin if tenant.is_some() && tenant == self.0.tenant_id => Ok(()),
            Role::TenantAdmin => Err(ApiError::forbidden("this belongs to another tenant")),
        }
    }

    /// What spans every tenant (queues, workers, the catalog area, the whole audit log):
    /// master_admin and service, never a tenant admin.
    pub fn may_read_deployment(&self) -> Result<(), ApiError> {
        match self.0.role {
            Role::MasterAdmin | Role::Service => Ok(()),
            Role::TenantAdmin => Err(ApiError::forbidden(
                "this spans every tenant: not for a tenant admin",
            )),
        }
    }

    /// A tenant's modules (request, state, settings): master_admin, service, or that
    /// tenant's own admin.
    pub fn may_manage_tenant(&self, tenant: i64) -> Result<(), ApiError> {
        match self.0.role {
            Role::MasterAdmin | Role::Service => Ok(()),
            Role::TenantAdmin if self.0.tenant_id == Some(tenant) => Ok(()),
            Role::TenantAdmin => Err(ApiError::forbidden("this belongs to another tenant")),
        }
    }

    /// The catalog and the plans: master_admin only.
    pub fn may_administer(&self) -> Result<(), ApiError> {
        match self.0.role {
            Role::MasterAdmin => Ok(()),
            _ => Err(ApiError::forbidden("only a master_admin may do this")),
        }
    }

    /// The tenant filter of a listing or bulk action: what was asked, or, for a
    /// tenant_admin, its own tenant (asking for another is forbidden).
    pub fn scope_tenant(&self, asked: Option<String>) -> Result<Option<String>, ApiError> {
        match (self.confined_to(), asked) {
            (Some(own), Some(asked)) if asked != own.to_string() => {
                Err(ApiError::forbidden("this belongs to another tenant"))
            }
            (Some(own), _) => Ok(Some(own.to_string())),
            (None, asked) => Ok(asked),
        }
    }

    /// The caller as the lifecycle operations see it: `api:<subject>`, with the authority
    /// of the token's role (verified by its signature, never taken from the name).
    pub fn actor(&self) -> crate::domain::actor::Actor {
        use crate::domain::actor::Actor;
        let name = format!("api:{}", self.0.sub);
        match self.0.role {
            Role::MasterAdmin => Actor::master_admin(name),
            Role::TenantAdmin => Actor::tenant_admin(name),
            Role::Service => Actor::service(name),
        }
    }

    /// The caller's role as definitions name it (`master_admin`, `service`, `tenant_admin`).
    pub fn role_name(&self) -> &'static str {
        match self.0.role {
            Role::MasterAdmin => "master_admin",
            Role::Service => "service",
            Role::TenantAdmin => "tenant_admin",
        }
    }

    /// The tenant a tenant_admin is confined to (`None`: any).
    pub fn confined_to(&self) -> Option<i64> {
        match self.0.role {
            Role::TenantAdmin => self.0.tenant_id,
            _ => None,
        }
    }
}

fn bearer(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        return value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_string());
    }
    parts
        .headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token =
            bearer(parts).ok_or_else(|| ApiError::unauthenticated("a bearer token is required"))?;
        state.keys.check(&token).map(Caller)
    }
}

/// SHA-256 of a credential: compared instead of the credential itself.
pub fn digest(credential: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(credential.as_bytes()).into()
}

/// Who may read `/metrics`: the scrape credential (`STEWARD_METRICS_TOKEN`), or a token of a
/// master_admin or the platform. A tenant admin may not: the figures cover every tenant.
#[derive(Debug)]
pub struct Scraper;

impl FromRequestParts<AppState> for Scraper {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token =
            bearer(parts).ok_or_else(|| ApiError::unauthenticated("a bearer token is required"))?;
        if state.metrics_token == Some(digest(&token)) {
            return Ok(Self);
        }
        match state.keys.check(&token)?.role {
            Role::MasterAdmin | Role::Service => Ok(Self),
            Role::TenantAdmin => Err(ApiError::forbidden(
                "a tenant_admin may not read deployment-wide metrics",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn tokens_check_signature_expiry_and_role_shape() {
        let keys = AuthKeys::new(SECRET).unwrap();
        let token = keys
            .mint("ops", Role::MasterAdmin, None, chrono::Duration::hours(1))
            .unwrap();
        assert_eq!(keys.check(&token).unwrap().role, Role::MasterAdmin);
        let other = AuthKeys::new("another secret of thirty-two bytes!").unwrap();
        assert_eq!(other.check(&token).unwrap_err().code, "unauthenticated");
        let expired = keys
            .mint("ops", Role::Service, None, chrono::Duration::seconds(-5))
            .unwrap();
        assert!(
            keys.check(&expired)
                .unwrap_err()
                .message
                .contains("expired")
        );
        assert!(
            keys.mint("t", Role::TenantAdmin, None, chrono::Duration::hours(1))
                .is_err()
        );
        assert!(AuthKeys::new("short").is_err());
    }

    fn signed(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn tokens_not_yet_valid_from_the_future_or_misshaped_are_refused() {
        let keys = AuthKeys::new(SECRET).unwrap();
        let now = chrono::Utc::now().timestamp();
        let base = serde_json::json!({"sub": "x", "role": "service", "iat": now, "exp": now + 600});
        assert!(keys.check(&signed(base.clone())).is_ok());
        let mut nbf = base.clone();
        nbf["nbf"] = (now + 300).into();
        let err = keys.check(&signed(nbf)).unwrap_err();
        assert_eq!(
            (err.code, err.message.contains("nbf")),
            ("unauthenticated", true)
        );
        let mut future = base.clone();
        future["iat"] = (now + 3600).into();
        assert!(
            keys.check(&signed(future))
                .unwrap_err()
                .message
                .contains("iat")
        );
        let mut no_iat = base.clone();
        no_iat.as_object_mut().unwrap().remove("iat");
        assert!(keys.check(&signed(no_iat)).is_err());
        let tenantless =
            serde_json::json!({"sub": "t", "role": "tenant_admin", "iat": now, "exp": now + 600});
        assert!(
            keys.check(&signed(tenantless))
                .unwrap_err()
                .message
                .contains("tenant_id")
        );
        let mut scoped_service = base;
        scoped_service["tenant_id"] = 7.into();
        assert!(keys.check(&signed(scoped_service)).is_err());
    }
}
