//! Bearer tokens: HS256 JWTs whose `sub` is the user id.

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
    iat: u64,
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
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
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
            iat: now,
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
