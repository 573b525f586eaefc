//! Request bodies, before any field is looked at: a JSON object, or the one problem that says
//! why not (empty, not UTF-8, not JSON, not an object), as a message and its detail; and the
//! largest body accepted.

use serde_json::{Map, Value};

use crate::domain::FieldError;

/// Largest request body accepted (bytes); larger is 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Why a body is not a JSON object: the message and the `body` detail a 400 carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NotAnObject {
    pub message: &'static str,
    pub detail: FieldError,
}

/// The body as a JSON object. `expected` says what an empty body should have been (for its
/// detail).
pub(crate) fn json_object(body: &[u8], expected: &str) -> Result<Map<String, Value>, NotAnObject> {
    let fail = |message, detail: String| NotAnObject {
        message,
        detail: FieldError::new("body", detail),
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(fail(
            "Request body is required",
            format!("must be {expected}"),
        ));
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        fail(
            "Request body is not valid UTF-8",
            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        )
    })?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(fail(
            "Request body must be a JSON object",
            format!("expected an object, got {}", json_type(&other)),
        )),
        Err(e) => Err(fail(
            "Request body is not valid JSON",
            format!("invalid JSON at line {} column {}", e.line(), e.column()),
        )),
    }
}

/// A JSON value's type, as a message names it.
pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_non_object_says_what_it_is() {
        let message = |b: &[u8]| json_object(b, "an object").unwrap_err().message;
        assert_eq!(message(b" \n"), "Request body is required");
        assert_eq!(message(b"\xff"), "Request body is not valid UTF-8");
        assert_eq!(message(b"{"), "Request body is not valid JSON");
        assert_eq!(message(b"[1]"), "Request body must be a JSON object");
        assert_eq!(
            json_object(b"7", "x").unwrap_err().detail.message,
            "expected an object, got a number"
        );
        assert!(json_object(br#"{"a": 1}"#, "x").unwrap().contains_key("a"));
    }
}
