//! Bearer tokens: JWTs whose `sub` is the user id, HS256 with the node's
//! secret, or RS256 and ES256 with the public keys of a JWKS file or URL
//! (an identity provider's key set).
//!
//! `exp` and `sub` are required; `iat` is optional (many identity providers
//! set it, some don't). `iss` and `aud` are checked when configured and
//! ignored otherwise, so a provider's token, which carries both, is taken.
//!
//! The key set is read at start (a bad one fails the start) and again when
//! its file changes: looked at when a token names a key it lacks (at most
//! once a second) and at least once a minute, so a rotation is picked up
//! and a removed key stops working. A file that no longer parses, or holds
//! no usable key, is logged and the last good set kept. Only RSA keys (as
//! RS256) and P-256 keys (as ES256) are taken from it: a symmetric key in
//! a published set would let anyone who read it sign tokens.
//!
//! A key set URL is fetched at start (failing the start when it cannot be
//! used), again every minute by the node's task `jwks_refresh`, and at
//! once (at most once a second) when a token names a key the set lacks;
//! a fetch that fails keeps the last good set.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
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
    /// The key set file cannot be used.
    #[error("key set {0}")]
    KeySet(String),
    /// No key of the key set signed it (a new one may be fetched).
    #[error("invalid token: no key for this token")]
    UnknownKey,
}

/// What a token must say (`iss` and `aud` are checked by the validation).
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
}

/// What a token this node mints says: its configured `iss` and `aud` too,
/// so its own tokens pass its own checks.
#[derive(Debug, Serialize)]
struct Minted<'a> {
    sub: String,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Mints and verifies tokens: HS256 with one shared secret, and RS256 or
/// ES256 with a key set's public keys.
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The checks for HS256, RS256 and ES256 tokens, derived from `issuer`
    /// and `audience` (jsonwebtoken wants one algorithm family per check).
    hs256: Validation,
    rs256: Validation,
    es256: Validation,
    jwks: Option<Jwks>,
    issuer: Option<String>,
    audience: Option<String>,
}

/// What a token signed with `algorithm` must satisfy.
fn validation(algorithm: Algorithm, issuer: Option<&str>, audience: Option<&str>) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation.leeway = 30;
    if let Some(issuer) = issuer {
        validation.set_issuer(&[issuer]);
        validation.required_spec_claims.insert("iss".into());
    }
    match audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            validation.required_spec_claims.insert("aud".into());
        }
        // Without a configured audience any `aud` is fine (jsonwebtoken
        // would refuse every token that has one).
        None => validation.validate_aud = false,
    }
    validation
}

/// How often the key set's file is looked at, at least.
const JWKS_RECHECK: Duration = Duration::from_secs(60);
/// How often a token naming an unknown key may make it look.
const JWKS_RECHECK_UNKNOWN: Duration = Duration::from_secs(1);
/// The largest key set file read.
const JWKS_LEN_MAX: u64 = 1024 * 1024;

/// How often a key set URL is fetched again.
pub const JWKS_URL_REFETCH: Duration = Duration::from_secs(60);

/// Where a key set comes from.
enum Source {
    /// A file, re-read when it changes.
    File(PathBuf),
    /// A URL, fetched again now and then; one fetch at a time.
    Url {
        url: String,
        http: reqwest::Client,
        fetching: tokio::sync::Mutex<()>,
    },
}

/// A key set's usable keys, from a file or a URL.
struct Jwks {
    source: Source,
    state: Mutex<JwksState>,
}

struct JwksState {
    keys: Vec<PublicKey>,
    modified: Option<SystemTime>,
    checked: Instant,
}

struct PublicKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The file's modification time and its usable keys.
fn read_jwks(path: &Path) -> Result<(Option<SystemTime>, Vec<PublicKey>), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > JWKS_LEN_MAX {
        return Err(format!(
            "{}: larger than {JWKS_LEN_MAX} bytes",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let keys = parse_jwks(&text, &path.display().to_string())?;
    Ok((meta.modified().ok(), keys))
}

/// The usable keys of the key set `text` (from `origin`, for errors).
fn parse_jwks(text: &str, origin: &str) -> Result<Vec<PublicKey>, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("{origin}: not a JWKS: {e}"))?;
    let keys: Vec<PublicKey> = set
        .keys
        .iter()
        .filter_map(|jwk| {
            let algorithm = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                _ => return None,
            };
            // A key marked for another algorithm is not used for this one.
            if let Some(declared) = jwk.common.key_algorithm
                && !matches!(
                    (declared, algorithm),
                    (KeyAlgorithm::RS256, Algorithm::RS256)
                        | (KeyAlgorithm::ES256, Algorithm::ES256)
                )
            {
                return None;
            }
            Some(PublicKey {
                kid: jwk.common.key_id.clone(),
                algorithm,
                key: DecodingKey::from_jwk(jwk).ok()?,
            })
        })
        .collect();
    if keys.is_empty() {
        return Err(format!("{origin}: no RS256 or ES256 key"));
    }
    Ok(keys)
}

/// The key set at `url`, at most `JWKS_LEN_MAX` bytes.
async fn fetch_jwks(http: &reqwest::Client, url: &str) -> Result<Vec<PublicKey>, String> {
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url}: answered {}", response.status()));
    }
    if response.content_length().is_some_and(|n| n > JWKS_LEN_MAX) {
        return Err(format!("{url}: larger than {JWKS_LEN_MAX} bytes"));
    }
    let body = response.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    if u64::try_from(body.len()).unwrap_or(u64::MAX) > JWKS_LEN_MAX {
        return Err(format!("{url}: larger than {JWKS_LEN_MAX} bytes"));
    }
    parse_jwks(&String::from_utf8_lossy(&body), url)
}

// The key set's file changes in real time, as tokens expire in it.
#[allow(clippy::disallowed_methods)]
impl Jwks {
    fn load(path: PathBuf) -> Result<Self, AuthError> {
        let (modified, keys) = read_jwks(&path).map_err(AuthError::KeySet)?;
        Ok(Self {
            source: Source::File(path),
            state: Mutex::new(JwksState {
                keys,
                modified,
                checked: Instant::now(),
            }),
        })
    }

    async fn fetch(url: String) -> Result<Self, AuthError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| AuthError::KeySet(format!("{url}: {e}")))?;
        let keys = fetch_jwks(&http, &url).await.map_err(AuthError::KeySet)?;
        Ok(Self {
            source: Source::Url {
                url,
                http,
                fetching: tokio::sync::Mutex::new(()),
            },
            state: Mutex::new(JwksState {
                keys,
                modified: None,
                checked: Instant::now(),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, JwksState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fetches a key set URL again if `since` has passed since the last
    /// fetch; a failed fetch keeps the keys there were. Nothing for a file.
    async fn refetch(&self, since: Duration) {
        let Source::Url {
            url,
            http,
            fetching,
        } = &self.source
        else {
            return;
        };
        let _one = fetching.lock().await;
        if self.state().checked.elapsed() < since {
            return;
        }
        let fetched = fetch_jwks(http, url).await;
        let mut state = self.state();
        state.checked = Instant::now();
        match fetched {
            Ok(keys) => {
                tracing::debug!(%url, keys = keys.len(), "key set fetched");
                state.keys = keys;
            }
            Err(error) => tracing::warn!(%error, "key set not fetched; the last good one stays"),
        }
    }

    /// Reads the file again if it changed and `since` has passed since the
    /// last look; a bad file keeps the keys there were. A URL is fetched
    /// by [`Jwks::refetch`], never here.
    fn refresh(&self, state: &mut JwksState, since: Duration) {
        let Source::File(path) = &self.source else {
            return;
        };
        if state.checked.elapsed() < since {
            return;
        }
        state.checked = Instant::now();
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified.is_some() && modified == state.modified {
            return;
        }
        match read_jwks(path) {
            Ok((modified, keys)) => {
                tracing::info!(path = %path.display(), keys = keys.len(), "key set reloaded");
                state.keys = keys;
                state.modified = modified;
            }
            Err(error) => {
                tracing::warn!(%error, "key set not reloaded; the last good one stays");
            }
        }
    }

    /// The key a token with this header is checked with.
    fn key(&self, header: &Header) -> Option<DecodingKey> {
        let mut state = self.state();
        self.refresh(&mut state, JWKS_RECHECK);
        let find = |state: &JwksState| {
            let mut candidates = state.keys.iter().filter(|k| k.algorithm == header.alg);
            match &header.kid {
                Some(kid) => candidates
                    .find(|k| k.kid.as_deref() == Some(kid))
                    .map(|k| k.key.clone()),
                // Without a kid only a set with one such key can say which.
                None => match (candidates.next(), candidates.next()) {
                    (Some(only), None) => Some(only.key.clone()),
                    _ => None,
                },
            }
        };
        if let Some(key) = find(&state) {
            return Some(key);
        }
        self.refresh(&mut state, JWKS_RECHECK_UNKNOWN);
        find(&state)
    }
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
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            hs256: validation(Algorithm::HS256, None, None),
            rs256: validation(Algorithm::RS256, None, None),
            es256: validation(Algorithm::ES256, None, None),
            jwks: None,
            issuer: None,
            audience: None,
        }
    }

    /// Derives the checks again after `issuer` or `audience` changed.
    fn checks_changed(mut self) -> Self {
        let (issuer, audience) = (self.issuer.as_deref(), self.audience.as_deref());
        self.hs256 = validation(Algorithm::HS256, issuer, audience);
        self.rs256 = validation(Algorithm::RS256, issuer, audience);
        self.es256 = validation(Algorithm::ES256, issuer, audience);
        self
    }

    /// Also takes RS256 and ES256 tokens signed by the keys in the JWKS
    /// file at `path`, read now and again when it changes.
    ///
    /// # Errors
    ///
    /// [`AuthError::KeySet`] when the file cannot be read, is not a key
    /// set, or holds no RS256 or ES256 key.
    pub fn with_jwks_file(mut self, path: Option<PathBuf>) -> Result<Self, AuthError> {
        if let Some(path) = path {
            self.jwks = Some(Jwks::load(path)?);
        }
        Ok(self)
    }

    /// Also takes RS256 and ES256 tokens signed by the keys of the JWKS at
    /// `url` (`https://`, or `http://` inside a cluster), fetched now and
    /// every [`JWKS_URL_REFETCH`] by [`Auth::refetch_keys`].
    ///
    /// # Errors
    ///
    /// [`AuthError::KeySet`] when the URL does not answer a key set with an
    /// RS256 or ES256 key.
    pub async fn with_jwks_url(mut self, url: Option<String>) -> Result<Self, AuthError> {
        if let Some(url) = url {
            if self.jwks.is_some() {
                return Err(AuthError::KeySet(
                    "given as a file and as a URL: give one".into(),
                ));
            }
            self.jwks = Some(Jwks::fetch(url).await?);
        }
        Ok(self)
    }

    /// Whether the key set comes from a URL, to be fetched again now and
    /// then.
    #[must_use]
    pub fn fetches_keys(&self) -> bool {
        matches!(
            self.jwks.as_ref().map(|j| &j.source),
            Some(Source::Url { .. })
        )
    }

    /// Fetches the key set URL again unless it was fetched within `since`.
    pub async fn refetch_keys(&self, since: Duration) {
        if let Some(jwks) = &self.jwks {
            jwks.refetch(since).await;
        }
    }

    /// [`Auth::verify`], fetching the key set again first (at most once a
    /// second) when the token names a key it lacks.
    ///
    /// # Errors
    ///
    /// As [`Auth::verify`].
    pub async fn verify_fetching(&self, token: &str) -> Result<Uuid, AuthError> {
        match self.verify(token) {
            Err(AuthError::UnknownKey) if self.fetches_keys() => {
                self.refetch_keys(JWKS_RECHECK_UNKNOWN).await;
                self.verify(token)
            }
            other => other,
        }
    }

    /// Requires `iss` to be `issuer`.
    #[must_use]
    pub fn with_issuer(mut self, issuer: Option<&str>) -> Self {
        if issuer.is_none() {
            return self;
        }
        self.issuer = issuer.map(str::to_owned);
        self.checks_changed()
    }

    /// Requires `aud` to be, or to list, `audience`.
    #[must_use]
    pub fn with_audience(mut self, audience: Option<&str>) -> Self {
        if audience.is_none() {
            return self;
        }
        self.audience = audience.map(str::to_owned);
        self.checks_changed()
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
        let claims = Minted {
            sub: user.to_string(),
            iat: now,
            exp: now + ttl.as_secs(),
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
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
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let data = match header.alg {
            Algorithm::HS256 => jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.hs256),
            Algorithm::RS256 | Algorithm::ES256 => {
                let key = self
                    .jwks
                    .as_ref()
                    .and_then(|jwks| jwks.key(&header))
                    .ok_or(AuthError::UnknownKey)?;
                let checks = if header.alg == Algorithm::RS256 {
                    &self.rs256
                } else {
                    &self.es256
                };
                jsonwebtoken::decode::<Claims>(token, &key, checks)
            }
            other => return Err(AuthError::Invalid(format!("{other:?} is not accepted"))),
        }
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

    fn keys(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/keys")
            .join(name)
    }

    fn provider_signed(algorithm: Algorithm, der: &str, kid: Option<&str>, user: Uuid) -> String {
        let der = std::fs::read(keys(der)).unwrap();
        let key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_der(&der),
            _ => EncodingKey::from_ec_der(&der),
        };
        let mut header = Header::new(algorithm);
        header.kid = kid.map(str::to_owned);
        let claims = serde_json::json!({
            "sub": user.to_string(),
            "exp": now() + 600,
            "iss": "https://idp.example.com/",
            "aud": "switchboard",
        });
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    #[test]
    fn rs256_and_es256_tokens_are_checked_against_the_key_set() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("jwks.json");
        std::fs::copy(keys("jwks.json"), &path).unwrap();
        let auth = Auth::new(SECRET)
            .with_audience(Some("switchboard"))
            .with_jwks_file(Some(path.clone()))
            .unwrap();
        let user = Uuid::new_v4();
        for token in [
            provider_signed(Algorithm::RS256, "rs256.der", Some("rsa-1"), user),
            provider_signed(Algorithm::RS256, "rs256.der", None, user),
            provider_signed(Algorithm::ES256, "es256.der", Some("ec-1"), user),
        ] {
            assert_eq!(auth.verify(&token).unwrap(), user);
        }
        // HS256 with the node's secret still works beside them.
        assert_eq!(
            auth.verify(&auth.mint(user, Duration::from_secs(60)).unwrap())
                .unwrap(),
            user
        );
        // A key the set does not hold, or a kid naming another key, is refused.
        let rotated = provider_signed(Algorithm::RS256, "other-rs256.der", Some("rsa-2"), user);
        assert!(auth.verify(&rotated).is_err());
        let lying = provider_signed(Algorithm::RS256, "other-rs256.der", Some("rsa-1"), user);
        assert!(auth.verify(&lying).is_err());
        // An HS256 token signed with a public key as its secret (the
        // algorithm confusion attack) is refused: HS256 is the secret's.
        let public = std::fs::read(keys("jwks.json")).unwrap();
        let confused = signed(
            &serde_json::json!({ "sub": user.to_string(), "exp": now() + 600 }),
            &public,
        );
        assert!(auth.verify(&confused).is_err());

        // The provider rotates: the new key works once the file has it.
        std::thread::sleep(JWKS_RECHECK_UNKNOWN);
        std::fs::copy(keys("jwks-rotated.json"), &path).unwrap();
        bump_modified(&path);
        assert_eq!(auth.verify(&rotated).unwrap(), user);
        // A broken file keeps the last good set.
        std::thread::sleep(JWKS_RECHECK_UNKNOWN);
        std::fs::write(&path, "{not json").unwrap();
        bump_modified(&path);
        let fresh = provider_signed(Algorithm::RS256, "other-rs256.der", Some("rsa-3"), user);
        assert!(auth.verify(&fresh).is_err());
        assert_eq!(auth.verify(&rotated).unwrap(), user);
    }

    /// A modification time clearly after the last one, whatever the file
    /// system's resolution.
    /// A key set server: answers every GET with `served`'s status and body.
    async fn jwks_server(
        served: std::sync::Arc<Mutex<(u16, String)>>,
    ) -> (String, tokio::task::JoinHandle<()>) {
        use axum::response::IntoResponse;
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let served = std::sync::Arc::clone(&served);
                async move {
                    let (status, body) = served.lock().unwrap().clone();
                    (
                        axum::http::StatusCode::from_u16(status).unwrap(),
                        [("content-type", "application/json")],
                        body,
                    )
                        .into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (url, server)
    }

    #[tokio::test]
    async fn a_key_set_url_is_fetched_at_start_again_for_a_new_key_and_kept_when_it_fails() {
        let body = |name: &str| std::fs::read_to_string(keys(name)).unwrap();
        let served = std::sync::Arc::new(Mutex::new((200, body("jwks.json"))));
        let (url, server) = jwks_server(std::sync::Arc::clone(&served)).await;
        let auth = Auth::new(SECRET)
            .with_jwks_url(Some(url.clone()))
            .await
            .unwrap();
        assert!(auth.fetches_keys());
        let user = Uuid::new_v4();
        let token = provider_signed(Algorithm::RS256, "rs256.der", Some("rsa-1"), user);
        assert_eq!(auth.verify_fetching(&token).await.unwrap(), user);
        let es = provider_signed(Algorithm::ES256, "es256.der", Some("ec-1"), user);
        assert_eq!(auth.verify_fetching(&es).await.unwrap(), user);

        // The provider rotates: a token with the new kid has the set fetched
        // again (at most once a second) and is taken.
        let rotated = provider_signed(Algorithm::RS256, "other-rs256.der", Some("rsa-2"), user);
        served.lock().unwrap().1 = body("jwks-rotated.json");
        std::thread::sleep(JWKS_RECHECK_UNKNOWN);
        assert_eq!(auth.verify_fetching(&rotated).await.unwrap(), user);

        // The provider fails: the last good set stays.
        *served.lock().unwrap() = (500, "down".into());
        std::thread::sleep(JWKS_RECHECK_UNKNOWN);
        auth.refetch_keys(Duration::ZERO).await;
        assert_eq!(auth.verify_fetching(&rotated).await.unwrap(), user);
        let unknown = provider_signed(Algorithm::RS256, "other-rs256.der", Some("rsa-9"), user);
        assert!(matches!(
            auth.verify_fetching(&unknown).await,
            Err(AuthError::UnknownKey)
        ));
        server.abort();

        // A URL that does not answer a usable set fails the start.
        for bad in [url.clone(), "http://127.0.0.1:9/jwks".to_owned()] {
            assert!(matches!(
                Auth::new(SECRET).with_jwks_url(Some(bad)).await,
                Err(AuthError::KeySet(_))
            ));
        }
        // A file and a URL at once is refused.
        let both = Auth::new(SECRET)
            .with_jwks_file(Some(keys("jwks.json")))
            .unwrap()
            .with_jwks_url(Some(url))
            .await;
        assert!(matches!(both, Err(AuthError::KeySet(_))));
    }

    fn bump_modified(path: &Path) {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
    }

    #[test]
    fn a_key_set_without_a_usable_key_fails_the_start() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("jwks.json");
        for text in [
            "not json",
            r#"{"keys":[]}"#,
            r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","alg":"HS256"}]}"#,
        ] {
            std::fs::write(&path, text).unwrap();
            assert!(
                Auth::new(SECRET)
                    .with_jwks_file(Some(path.clone()))
                    .is_err(),
                "{text}"
            );
        }
        assert!(
            Auth::new(SECRET)
                .with_jwks_file(Some(folder.path().join("missing")))
                .is_err()
        );
    }

    fn base64_url(text: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }
}
