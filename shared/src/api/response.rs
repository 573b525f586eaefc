//! What a handler answers: a status and a JSON body, before any HTTP library sees it. Built
//! with `ApiResponse::ok`, which lives with the errors (`error`): a body that cannot be
//! serialized is answered as the opaque 500.

use serde_json::Value;

/// Status and JSON body; the function crates turn it into an HTTP response.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Value,
}
