//! Reading Redis answers without trusting them.
//!
//! Answers are [`redis::Value`] trees; these helpers take them apart by shape and turn
//! any surprise into [`ClusterError::Malformed`] (escaped), never a panic. Numbers are
//! parsed from their decimal text, as Redis and our scripts send them.

use redis::Value;

use super::error::{ClusterError, escape_bytes};

/// The bytes of a string answer.
pub(crate) fn bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

/// The items of an array (or set) answer.
pub(crate) fn items(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

/// A number sent as an integer or as decimal text.
pub(crate) fn number(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => parse_u64(bytes(other)?),
    }
}

/// Decimal text as a `u64`: digits only, no sign, no spaces.
pub(crate) fn parse_u64(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// A [`ClusterError::Malformed`] saying what was expected and showing what came.
pub(crate) fn malformed(what: &str, value: &Value) -> ClusterError {
    let shown = match value {
        Value::BulkString(b) => escape_bytes(b),
        other => {
            let text = format!("{other:?}");
            escape_bytes(text.as_bytes())
        }
    };
    ClusterError::Malformed(format!("expected {what}, got {shown}"))
}

/// A script's answer: `{status, ...}`. Returns the status and the rest.
pub(crate) fn status(value: &Value) -> Result<(&[u8], &[Value]), ClusterError> {
    let parts = items(value).ok_or_else(|| malformed("a script's answer", value))?;
    let (first, rest) = parts
        .split_first()
        .ok_or_else(|| malformed("a script's status", value))?;
    let status = bytes(first).ok_or_else(|| malformed("a script's status", value))?;
    Ok((status, rest))
}

/// Item `index` of a script's answer, as a number.
pub(crate) fn number_at(rest: &[Value], index: usize, what: &str) -> Result<u64, ClusterError> {
    let value = rest.get(index).unwrap_or(&Value::Nil);
    number(value).ok_or_else(|| malformed(what, value))
}

/// A `{'epoch', found}` answer as the error it means.
pub(crate) fn epoch_changed(expected: u64, rest: &[Value]) -> ClusterError {
    ClusterError::EpochChanged {
        expected,
        found: rest.first().and_then(number),
    }
}
