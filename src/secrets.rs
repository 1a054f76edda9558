//! Secrets at rest (tenants' webhook secrets): sealed with AES-256-GCM under a key from the
//! environment (`STEWARD_SECRET_KEY`, 32 bytes as 64 hex digits), stored as
//! `v1:<hex nonce><hex ciphertext and tag>`. The database alone (a dump, a replica, a backup)
//! does not give them away. A value stored before sealing existed (no `v1:` prefix) is read as
//! it is, and sealed by the first delivery that has the key (or the next time it is set).
//! Secrets in transit to a log or an error message (a database URL's password) are
//! [redacted](redact).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

/// The prefix of a sealed value.
const SEALED: &str = "v1:";

/// Why a secret could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("STEWARD_SECRET_KEY must be 64 hex digits (32 bytes): {0}")]
    BadKey(String),
    #[error("a sealed secret is stored but STEWARD_SECRET_KEY is not set")]
    NoKey,
    #[error(
        "a stored secret could not be opened: wrong STEWARD_SECRET_KEY, or the value was altered"
    )]
    Corrupt,
    #[error("no randomness for a nonce")]
    Random,
}

/// The key secrets are sealed with.
pub struct SecretKey(LessSafeKey);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(…)")
    }
}

impl SecretKey {
    /// A key from its 64 hex digits.
    pub fn from_hex(hex_key: &str) -> Result<Self, SecretError> {
        let bytes = hex::decode(hex_key.trim()).map_err(|e| SecretError::BadKey(e.to_string()))?;
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| SecretError::BadKey(format!("{} bytes", bytes.len())))?;
        Ok(Self(LessSafeKey::new(unbound)))
    }

    /// `plain`, sealed (a fresh random nonce each time).
    pub fn seal(&self, plain: &str) -> Result<String, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SecretError::Random)?;
        let mut sealed = plain.as_bytes().to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut sealed,
            )
            .map_err(|_| SecretError::Random)?;
        Ok(format!(
            "{SEALED}{}{}",
            hex::encode(nonce),
            hex::encode(sealed)
        ))
    }

    /// The plain value of a stored one.
    pub fn open(&self, stored: &str) -> Result<String, SecretError> {
        open(Some(self), stored)
    }
}

/// Whether `stored` is sealed (rather than a value stored plain before sealing existed).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED)
}

/// The plain value of `stored` (sealed, or stored plain before sealing existed).
pub fn open(key: Option<&SecretKey>, stored: &str) -> Result<String, SecretError> {
    let Some(sealed) = stored.strip_prefix(SEALED) else {
        return Ok(stored.to_string());
    };
    let key = key.ok_or(SecretError::NoKey)?;
    let bytes = hex::decode(sealed).map_err(|_| SecretError::Corrupt)?;
    if bytes.len() < NONCE_LEN {
        return Err(SecretError::Corrupt);
    }
    let (nonce, rest) = bytes.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Corrupt)?;
    let mut in_out = rest.to_vec();
    let plain = key
        .0
        .open_in_place(nonce, Aad::empty(), &mut in_out)
        .map_err(|_| SecretError::Corrupt)?;
    String::from_utf8(plain.to_vec()).map_err(|_| SecretError::Corrupt)
}

/// A URL with any password replaced, for error messages.
pub fn redact(url: &str) -> String {
    // Parameters may carry secrets too (`?password=…`, libpq's `sslpassword=…`).
    if let Some((base, query)) = url.split_once('?') {
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if name.to_ascii_lowercase().contains("password") => {
                    format!("{name}=***")
                }
                _ => pair.to_string(),
            })
            .collect();
        return format!("{}?{}", redact(base), query.join("&"));
    }
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}://{}:***{}",
                    &url[..scheme_end],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_unaltered() {
        let key = SecretKey::from_hex(KEY).unwrap();
        let sealed = key.seal("whsec-1").unwrap();
        assert!(sealed.starts_with("v1:") && !sealed.contains("whsec"));
        assert_ne!(
            sealed,
            key.seal("whsec-1").unwrap(),
            "a fresh nonce each time"
        );
        assert_eq!(key.open(&sealed).unwrap(), "whsec-1");
        let other = SecretKey::from_hex(&KEY.replace("1f", "ff")).unwrap();
        assert!(matches!(other.open(&sealed), Err(SecretError::Corrupt)));
        // Change the last character (to one it is not: a test that altered nothing when
        // it already was '0' failed one run in sixteen).
        let mut altered = sealed.clone();
        let last = altered.pop();
        altered.push(if last == Some('0') { '1' } else { '0' });
        assert!(key.open(&altered).is_err());
        assert!(matches!(open(None, &sealed), Err(SecretError::NoKey)));
        assert_eq!(open(None, "legacy-plain").unwrap(), "legacy-plain");
        assert!(SecretKey::from_hex("abcd").is_err());
    }

    #[test]
    fn redact_hides_passwords() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://data/x.db"), "sqlite://data/x.db");
        assert_eq!(
            redact("postgres://u:pw@h/db?sslmode=require&password=secret&sslpassword=s2"),
            "postgres://u:***@h/db?sslmode=require&password=***&sslpassword=***"
        );
        assert_eq!(
            redact("postgres:///db?user=u&PASSWORD=secret"),
            "postgres:///db?user=u&PASSWORD=***"
        );
    }
}
