//! The bodies of `POST /api/servers` and `PATCH /api/servers/{name}`, read into what they
//! ask for, every problem reported with its field.

use serde_json::{Map, Value};

use super::body::json_object;
use crate::{
    domain::{FieldError, ServerName},
    servers::{NewServer, ServerPatch, ServerState, ServersError},
};

fn invalid(message: &str, details: Vec<FieldError>) -> ServersError {
    ServersError::Validation {
        message: message.to_owned(),
        details,
    }
}

/// The request body as a JSON object, or the error that says why it is not one.
fn body_object(body: &[u8]) -> Result<Map<String, Value>, ServersError> {
    json_object(body, "a JSON object").map_err(|e| invalid(e.message, vec![e.detail]))
}

/// Reads the fields of a body: each problem is reported with its field, unknown fields too.
struct Fields {
    map: Map<String, Value>,
    details: Vec<FieldError>,
}

impl Fields {
    fn take(&mut self, name: &str, required: bool) -> Option<Value> {
        match self.map.remove(name) {
            None | Some(Value::Null) if required => {
                self.details.push(FieldError::new(name, "is required"));
                None
            }
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    fn text(&mut self, name: &str, required: bool, max: usize) -> Option<String> {
        match self.take(name, required)? {
            Value::String(s) if !s.trim().is_empty() && s.len() <= max => Some(s.trim().to_owned()),
            Value::String(_) => {
                self.details.push(FieldError::new(
                    name,
                    format!("must be 1 to {max} characters"),
                ));
                None
            }
            _ => {
                self.details.push(FieldError::new(name, "must be a string"));
                None
            }
        }
    }

    fn number(
        &mut self,
        name: &str,
        required: bool,
        range: std::ops::RangeInclusive<i64>,
    ) -> Option<i64> {
        match self.take(name, required)? {
            Value::Number(n) if n.as_i64().is_some_and(|n| range.contains(&n)) => n.as_i64(),
            _ => {
                self.details.push(FieldError::new(
                    name,
                    format!(
                        "must be a whole number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                ));
                None
            }
        }
    }

    fn finish(mut self) -> Result<(), ServersError> {
        let mut unknown: Vec<String> = self.map.keys().cloned().collect();
        unknown.sort();
        for field in unknown {
            let shown: String = field.chars().take(64).collect();
            self.details.push(FieldError::new(shown, "unknown field"));
        }
        if self.details.is_empty() {
            Ok(())
        } else {
            Err(invalid("Invalid request body", self.details))
        }
    }
}

/// Parses a `POST /api/servers` body.
pub(super) fn parse_new_server(body: &[u8]) -> Result<NewServer, ServersError> {
    let mut f = Fields {
        map: body_object(body)?,
        details: Vec::new(),
    };
    let name = f.text("name", true, 63).and_then(|n| {
        ServerName::parse(&n)
            .map_err(|e| f.details.push(FieldError::new("name", e)))
            .ok()
    });
    let host = f.text("host", true, 253);
    let port = f.number("port", true, 1..=65535);
    let secret_arn = f.text("secret_arn", true, 2048);
    let max_tenants = f.number("max_tenants", true, 0..=1_000_000);
    let migrate_concurrency = f.number("migrate_concurrency", true, 1..=64);
    f.finish()?;
    match (
        name,
        host,
        port,
        secret_arn,
        max_tenants,
        migrate_concurrency,
    ) {
        (Some(name), Some(host), Some(port), Some(secret_arn), Some(max), Some(conc)) => {
            Ok(NewServer {
                name,
                host,
                port: port as u16,
                secret_arn,
                max_tenants: max as i32,
                migrate_concurrency: conc as i32,
            })
        }
        _ => Err(invalid("Invalid request body", Vec::new())),
    }
}

/// Parses a `PATCH /api/servers/{name}` body: at least one of `state`, `max_tenants`,
/// `migrate_concurrency`.
pub(super) fn parse_patch(body: &[u8]) -> Result<ServerPatch, ServersError> {
    let mut f = Fields {
        map: body_object(body)?,
        details: Vec::new(),
    };
    let state =
        f.take("state", false)
            .and_then(|v| match v.as_str().and_then(ServerState::parse) {
                Some(s) => Some(s),
                None => {
                    f.details
                        .push(FieldError::new("state", "must be \"open\" or \"draining\""));
                    None
                }
            });
    let max_tenants = f
        .number("max_tenants", false, 0..=1_000_000)
        .map(|n| n as i32);
    let migrate_concurrency = f
        .number("migrate_concurrency", false, 1..=64)
        .map(|n| n as i32);
    f.finish()?;
    let patch = ServerPatch {
        state,
        max_tenants,
        migrate_concurrency,
    };
    if patch == ServerPatch::default() {
        return Err(invalid(
            "Nothing to change",
            vec![FieldError::new(
                "body",
                "give state, max_tenants or migrate_concurrency",
            )],
        ));
    }
    Ok(patch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_name_each_problem() {
        let ok = parse_new_server(
            br#"{"name": "second", "host": "db2.internal", "port": 5432,
                 "secret_arn": "dbtools/servers/second", "max_tenants": 100,
                 "migrate_concurrency": 5}"#,
        )
        .unwrap();
        assert_eq!(
            (ok.name.as_str(), ok.port, ok.max_tenants),
            ("second", 5432, 100)
        );
        let fields = |body: &str| match parse_new_server(body.as_bytes()) {
            Err(ServersError::Validation { details, .. }) => {
                details.into_iter().map(|d| d.field).collect::<Vec<_>>()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(
            fields(r#"{"name": "Bad", "port": 0, "extra": 1}"#),
            [
                "name",
                "host",
                "port",
                "secret_arn",
                "max_tenants",
                "migrate_concurrency",
                "extra"
            ]
        );
        assert!(matches!(
            parse_patch(b"{}"),
            Err(ServersError::Validation { .. })
        ));
        assert!(matches!(
            parse_patch(br#"{"state": "closed"}"#),
            Err(ServersError::Validation { .. })
        ));
        assert_eq!(
            parse_patch(br#"{"state": "draining", "max_tenants": 0}"#).unwrap(),
            ServerPatch {
                state: Some(ServerState::Draining),
                max_tenants: Some(0),
                migrate_concurrency: None
            }
        );
    }
}
