//! Input errors that name the field at fault.
//!
//! Every rejection of user input in reeve is an [`InputError`]: the API turns
//! it into `400 {error:"invalid_input", message, field}`, the CLI prints it.
//! Validation happens before anything is written, so bad input changes nothing.

use thiserror::Error;

/// Bad input: which field, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {message}")]
pub struct InputError {
    pub field: String,
    pub message: String,
}

impl InputError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        InputError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Longest queue or kind name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// Queue, kind and worker names: 1–128 of `A-Z a-z 0-9 _ - . :`. Keeping
/// them to this set means they can appear unquoted in logfmt lines, metric
/// labels and URLs.
pub fn name(field: &str, value: &str) -> Result<(), InputError> {
    if value.is_empty() {
        return Err(InputError::new(field, "must not be empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(InputError::new(
            field,
            format!("must be at most {MAX_NAME_LEN} characters"),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        return Err(InputError::new(
            field,
            format!("may contain only letters, digits, '_', '-', '.', ':' (found {bad:?})"),
        ));
    }
    Ok(())
}

/// Free-text keys (unique and idempotency keys): 1–512 bytes, no control
/// characters.
pub fn key(field: &str, value: &str) -> Result<(), InputError> {
    if value.is_empty() {
        return Err(InputError::new(field, "must not be empty"));
    }
    if value.len() > 512 {
        return Err(InputError::new(field, "must be at most 512 bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(InputError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_with_the_field() {
        assert!(name("queue", "agents.nightly-1").is_ok());
        let e = name("queue", "has space").unwrap_err();
        assert_eq!(e.field, "queue");
        assert!(name("kind", "").is_err());
        assert!(name("kind", &"x".repeat(129)).is_err());
    }
}
