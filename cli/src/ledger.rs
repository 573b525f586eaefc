//! The run ledger as the CLI reads it (`GET /api/runs/{id}`, page after page) and shows it:
//! a run's fields, and its tenants as a table (`runs show`, `runs watch`, a report's tenants).

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::{client::Client, error::CliError, output};

/// The run and its tenants: one page of `limit`, or every page with `all`.
pub async fn fetch_run(
    client: &Client,
    id: &str,
    status: Option<&str>,
    limit: u32,
    all: bool,
) -> Result<(Value, Vec<Value>), CliError> {
    let mut tenants = Vec::new();
    let mut cursor: Option<String> = None;
    let mut seen = HashSet::new();
    loop {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(s) = status {
            query.push(("status", s.to_owned()));
        }
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let mut run = client
            .get(&[("", "api"), ("", "runs"), ("run", id)], &query)
            .await?;
        if let Some(Value::Array(page)) = run.get_mut("tenants").map(Value::take) {
            tenants.extend(page);
        }
        match run["next_cursor"].as_str() {
            Some(next) if all => {
                // A cursor seen before would page forever.
                if !seen.insert(next.to_owned()) {
                    return Err(repeated_cursor(next));
                }
                cursor = Some(next.to_owned());
            }
            _ => {
                if let Some(map) = run.as_object_mut() {
                    map.remove("tenants");
                }
                return Ok((run, tenants));
            }
        }
    }
}

/// The API answered a `next_cursor` it had answered before: following it would never end.
pub fn repeated_cursor(cursor: &str) -> CliError {
    CliError::Unexpected {
        what: "the API".into(),
        status: 200,
        body: format!("next_cursor {cursor:?} was answered before; paging stopped"),
    }
}

/// The run's own fields, as a two-column table.
pub fn run_fields(run: &Value) -> String {
    let mut shown = run.clone();
    shown["counts"] = json!(output::counts(&run["counts"]));
    output::fields(
        &shown,
        &[
            "id",
            "status",
            "mode",
            "wave",
            "canary",
            "max_failures",
            "latest_version",
            "counts",
            "error",
            "started_at",
            "updated_at",
            "finished_at",
        ],
    )
}

/// Tenants of a run or a report.
pub fn tenant_table(tenants: &[Value]) -> String {
    let rows = tenants
        .iter()
        .map(|t| {
            let mut row = output::cells(t, &["slug", "server", "status", "wave"]);
            row.push(format!(
                "{} -> {}",
                output::cell(&t["from_version"]),
                output::cell(&t["to_version"])
            ));
            row.push(output::cell(&t["pending"]));
            row.push(output::cell(&t["error"]));
            row
        })
        .collect();
    output::table(
        &[
            "slug", "server", "status", "wave", "version", "pending", "error",
        ],
        rows,
    )
}
