//! Extractors whose rejections are [`ApiError`]s, so malformed input gets the
//! same error shape as everything else, and the authenticated user.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::{ApiError, AppState};

/// `axum::Json` with an [`ApiError`] rejection: 400 for malformed JSON, 422
/// for the wrong shape, 413 past the body limit, 415 without a JSON type.
#[derive(Debug)]
pub(crate) struct Json<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    ApiError::from_rejection(rejection.status(), &rejection.body_text())
}

/// `axum::extract::Path` with an [`ApiError`] rejection.
#[derive(Debug)]
pub(crate) struct Path<T>(pub(crate) T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Self(value))
            .map_err(|rejection: PathRejection| {
                ApiError::from_rejection(rejection.status(), &rejection.body_text())
            })
    }
}

/// `axum::extract::Query` with an [`ApiError`] rejection.
#[derive(Debug)]
pub(crate) struct Query<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|rejection: QueryRejection| {
                ApiError::from_rejection(rejection.status(), &rejection.body_text())
            })
    }
}

/// The user named by the `Authorization: Bearer` token.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AuthUser(pub(crate) Uuid);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
        let user = authenticate(state, token).await?;
        state.edge.user(&parts.method, user)?;
        Ok(Self(user))
    }
}

/// The token of an `Authorization: Bearer` header, if any.
pub(crate) fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

pub(crate) async fn authenticate(state: &AppState, token: &str) -> Result<Uuid, ApiError> {
    state.auth.verify_fetching(token).await.map_err(|error| {
        tracing::debug!(%error, "token refused");
        ApiError::unauthorized("invalid or expired token")
    })
}
