//! Checks on request bodies that the types alone cannot express.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use switchboard_protocol::ErrorCode;

use crate::{ApiError, HttpLimits};

/// Opaque base64 ciphertext: present, bounded, and valid base64.
pub(crate) fn ciphertext(field: &str, value: &str, len_max: usize) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::unprocessable(format!(
            "{field} must not be empty"
        )));
    }
    if value.len() > len_max {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("{field} is longer than {len_max} characters"),
        ));
    }
    if STANDARD.decode(value).is_err() {
        return Err(ApiError::unprocessable(format!(
            "{field} is not valid base64"
        )));
    }
    Ok(())
}

/// An application-defined message type: 1 to 32 of `a-z 0-9 _ . -`.
pub(crate) fn message_type(value: &str) -> Result<(), ApiError> {
    let ok = (1..=32).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            "message_type must be 1 to 32 characters of a-z, 0-9, '_', '.' or '-'",
        ))
    }
}

/// An idempotency key: 1 to `len_max` visible ASCII characters.
pub(crate) fn idempotency_key(value: &str, limits: &HttpLimits) -> Result<(), ApiError> {
    let ok = (1..=limits.idempotency_key_len_max).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(ApiError::unprocessable(format!(
            "idempotency_key must be 1 to {} visible ascii characters",
            limits.idempotency_key_len_max
        )))
    }
}

/// A page size: 1 to `len_max`, `default` when absent.
pub(crate) fn page_len(value: Option<u32>, default: u32, len_max: u32) -> Result<u32, ApiError> {
    match value {
        None => Ok(default.min(len_max)),
        Some(n) if (1..=len_max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::unprocessable(format!(
            "limit must be between 1 and {len_max}"
        ))),
    }
}
