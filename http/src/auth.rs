//! Bearer tokens: HS256 JWTs whose `sub` is the user id.
//!
//! `exp` and `sub` are required; `iat` is optional (many identity providers
//! set it, some don't). `iss` and `aud` are checked when configured and
//! ignored otherwise, so a provider's token, which carries both, is taken.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Signature, expiry or format is wrong.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The `sub` claim is not a UUID.
    #[error("token subject is not a user id")]
    Subject,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    exp: u64,
}

/// Mints and verifies tokens with one shared secret.
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth { .. }")
    }
}

impl Auth {
    /// Keys from the HS256 secret.
    #[must_use]
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 30;
        // Without a configured audience any `aud` is fine (jsonwebtoken
        // would refuse every token that has one).
        validation.validate_aud = false;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Requires `iss` to be `issuer`.
    #[must_use]
    pub fn with_issuer(mut self, issuer: Option<&str>) -> Self {
        if let Some(issuer) = issuer {
            self.validation.set_issuer(&[issuer]);
            self.validation.required_spec_claims.insert("iss".into());
        }
        self
    }

    /// Requires `aud` to be, or to list, `audience`.
    #[must_use]
    pub fn with_audience(mut self, audience: Option<&str>) -> Self {
        if let Some(audience) = audience {
            self.validation.set_audience(&[audience]);
            self.validation.validate_aud = true;
            self.validation.required_spec_claims.insert("aud".into());
        }
        self
    }

    /// A token for `user` valid for `ttl`.
    ///
    /// # Errors
    ///
    /// [`AuthError::Invalid`] if signing fails.
    #[allow(clippy::disallowed_methods)] // Token expiry is checked against real time.
    pub fn mint(&self, user: Uuid, ttl: Duration) -> Result<String, AuthError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            sub: user.to_string(),
            iat: Some(now),
            exp: now + ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// The user a token names.
    ///
    /// # Errors
    ///
    /// [`AuthError`] for a bad signature, an expired token or a subject that
    /// is not a UUID.
    pub fn verify(&self, token: &str) -> Result<Uuid, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        Uuid::parse_str(&data.claims.sub).map_err(|_| AuthError::Subject)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // Tokens are checked against real time.
mod tests {
    use super::*;

    const SECRET: &[u8] = b"unit test secret, long enough for hs256 keys";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn signed(claims: &serde_json::Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn provider_token(user: Uuid, extra: &serde_json::Value) -> String {
        let mut claims = serde_json::json!({ "sub": user.to_string(), "exp": now() + 600 });
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        signed(&claims, SECRET)
    }

    #[test]
    fn a_token_without_iat_or_with_any_aud_is_taken_when_none_is_configured() {
        let auth = Auth::new(SECRET);
        let user = Uuid::new_v4();
        for extra in [
            serde_json::json!({}),
            serde_json::json!({ "aud": "some-api" }),
            serde_json::json!({ "aud": ["a", "b"], "iss": "https://idp.example.com/", "iat": now() }),
        ] {
            assert_eq!(
                auth.verify(&provider_token(user, &extra)).unwrap(),
                user,
                "{extra}"
            );
        }
    }

    #[test]
    fn a_configured_issuer_and_audience_must_match() {
        let auth = Auth::new(SECRET)
            .with_issuer(Some("https://idp.example.com/"))
            .with_audience(Some("switchboard"));
        let user = Uuid::new_v4();
        let good = serde_json::json!({ "iss": "https://idp.example.com/", "aud": ["other", "switchboard"] });
        assert_eq!(auth.verify(&provider_token(user, &good)).unwrap(), user);
        for bad in [
            serde_json::json!({ "iss": "https://idp.example.com/", "aud": "other" }),
            serde_json::json!({ "iss": "https://evil.example.com/", "aud": "switchboard" }),
            serde_json::json!({ "aud": "switchboard" }),
            serde_json::json!({ "iss": "https://idp.example.com/" }),
        ] {
            assert!(
                auth.verify(&provider_token(user, &bad)).is_err(),
                "{bad} taken"
            );
        }
    }

    #[test]
    fn forged_expired_and_unsigned_tokens_are_refused() {
        let auth = Auth::new(SECRET);
        let user = Uuid::new_v4();
        let other_key = signed(
            &serde_json::json!({ "sub": user.to_string(), "exp": now() + 600 }),
            b"another secret, also long enough for hs256",
        );
        let expired = provider_token(user, &serde_json::json!({ "exp": now() - 3600 }));
        let claims = base64_url(&format!(r#"{{"sub":"{user}","exp":{}}}"#, now() + 600));
        let unsigned = format!("{}.{claims}.", base64_url(r#"{"alg":"none","typ":"JWT"}"#));
        for token in [other_key, expired, unsigned] {
            assert!(auth.verify(&token).is_err(), "{token} taken");
        }
        let minted = auth.mint(user, Duration::from_secs(60)).unwrap();
        assert_eq!(auth.verify(&minted).unwrap(), user);
    }

    fn base64_url(text: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }
}
