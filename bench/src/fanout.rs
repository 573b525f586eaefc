//! The fan-out over SQS: one pending migration over the fleet through the queue against
//! inline, with the most tenant connections each server saw; and the planning of a run over
//! 100,000 registry rows.
//!
//! Planning sends one message per tenant. moto's SQS slows down as a queue grows (each
//! `SendMessageBatch` costs time in proportion to what the queue holds: 10,000 messages take
//! minutes on this machine), so it cannot measure our side of 100,000. The planning benchmark
//! therefore points the planner at a sink that speaks SQS's JSON protocol and accepts every
//! batch, and prints, next to the planner's time, the floor: the same messages sent to the
//! same sink straight from the SDK, with the planner's batching. The rest is ours (the
//! registry read, the ledger's rows, the run's other steps).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use e2e::json;
use futures_util::{stream, StreamExt};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::table::{ms, named_ms, Row, Stats};

/// The most client connections to the bench's tenant databases seen at once on each server,
/// sampled from `pg_stat_activity` every few milliseconds while it lives. Client backends
/// only: PostgreSQL's own workers in those databases (autovacuum, after a migration touched
/// a thousand of them) are not the product's and no budget bounds them.
pub struct ConnSampler {
    done: Arc<AtomicBool>,
    tasks: Vec<(&'static str, tokio::task::JoinHandle<i64>)>,
}

impl ConnSampler {
    pub async fn start() -> ConnSampler {
        let done = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for server in e2e::SERVERS {
            let admin = e2e::admin_on(server).await;
            let done = done.clone();
            tasks.push((
                server,
                tokio::spawn(async move {
                    let mut max = 0;
                    while !done.load(Ordering::Relaxed) {
                        if let Ok(row) = admin
                            .query_one(
                                "SELECT count(*) FROM pg_stat_activity \
                                 WHERE datname LIKE 'dbtools\\_tenant\\_bench\\_%' \
                                   AND backend_type = 'client backend'",
                                &[],
                            )
                            .await
                        {
                            max = max.max(row.get::<_, i64>(0));
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    max
                }),
            ));
        }
        ConnSampler { done, tasks }
    }

    /// Per server, the most connections seen.
    pub async fn stop(self) -> Vec<(&'static str, i64)> {
        self.done.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        for (server, task) in self.tasks {
            out.push((server, task.await.unwrap_or(-1)));
        }
        out
    }
}

/// Each server's budget (`migrate_concurrency`), from the API.
pub async fn budgets() -> Result<Vec<(String, i64)>> {
    let r = e2e::get("/api/servers").await;
    ensure!(r.status.is_success(), "GET /api/servers: {}", r.text);
    Ok(r.body["servers"]
        .as_array()
        .context("servers")?
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or("?").to_owned(),
                s["migrate_concurrency"].as_i64().unwrap_or(0),
            )
        })
        .collect())
}

/// The row of the most tenant connections each server saw, against its budget.
pub fn connections_row(seen: &[(&str, i64)], budgets: &[(String, i64)]) -> Row {
    let (text, within) = per_server(seen, budgets);
    Row::goal(
        "  … the most tenant connections at once per server",
        text,
        "sampled from pg_stat_activity every 5 ms".into(),
        "≤ each server's budget",
        within,
    )
}

/// "primary 10 (budget 10), secondary 5 (budget 5)"; and whether every server kept within.
fn per_server(seen: &[(&str, i64)], budgets: &[(String, i64)]) -> (String, bool) {
    let mut within = true;
    let text = seen
        .iter()
        .map(|(server, max)| {
            let budget = budgets
                .iter()
                .find(|(n, _)| n == server)
                .map_or(0, |(_, b)| *b);
            within &= *max <= budget;
            format!("{server} {max} (budget {budget})")
        })
        .collect::<Vec<_>>()
        .join(", ");
    (text, within)
}

/// The p50 of each `name_ms=` field of the lines of `log` that contain `marker` (the last
/// `n` such lines: the queued run's), in the order of `names`.
pub fn logged_p50s(log: &str, marker: &str, names: &[&str], n: usize) -> Result<Vec<f64>> {
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(marker)).collect();
    let lines = &lines[lines.len().saturating_sub(n)..];
    ensure!(!lines.is_empty(), "no line {marker:?} in the stack's logs");
    names
        .iter()
        .map(|name| {
            let key = format!("{name}_ms=");
            let values: Vec<f64> = lines
                .iter()
                .filter_map(|l| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix(key.as_str()))
                        .and_then(|v| v.parse().ok())
                })
                .collect();
            ensure!(!values.is_empty(), "no {key} in {marker:?} lines");
            Ok(Stats::of(values).p50)
        })
        .collect()
}

/// Where a queued message's time goes (p50s over the run's `tenants` messages): on the
/// local trigger's side (the stand-in for Lambda's event source mapping: its receive from
/// moto, the invoke through `cargo lambda watch`, the delete) and in the worker (reading the
/// run and the registry, migrating, recording and moving the run on); the rest of the invoke
/// is the emulator's and the runtime API's.
pub fn message_breakdown(tenants: usize) -> Result<Row> {
    let trigger = logged_p50s(
        &e2e::stack_log("trigger.log"),
        "timing receive_ms=",
        &["receive", "invoke", "delete"],
        tenants,
    )?;
    let worker = logged_p50s(
        &e2e::stack_log("watch.log"),
        "a queued tenant handled",
        &["registry", "migrate", "ledger"],
        tenants,
    )?;
    let (receive, invoke, delete) = (trigger[0], trigger[1], trigger[2]);
    let ours: f64 = worker.iter().sum();
    Ok(Row::info(
        "  … where a message's time goes (p50 per message)",
        format!("{} ms per invoke", ms(invoke)),
        format!(
            "trigger (stand-in): receive {} (up to ten messages a call) + delete {} ms; the \
             invoke {}: worker {} (registry {}, migrate {}, ledger {}), emulator and runtime \
             API {} ms",
            ms(receive),
            ms(delete),
            ms(invoke),
            ms(ours),
            ms(worker[0]),
            ms(worker[1]),
            ms(worker[2]),
            ms((invoke - ours).max(0.0))
        ),
    ))
}

/// A queued run over the fleet, from the invocation to the run's end in the ledger.
pub async fn queued_run(expect: usize) -> Result<(Duration, Value)> {
    let started = Instant::now();
    let (status, answer) = e2e::invoke_migrate_all(&json!({"inline": false})).await;
    ensure!(
        status.is_success() && answer["status"] == "queued",
        "migrate-all did not queue the run: {status} {answer}"
    );
    let id = answer["run_id"].as_str().context("run_id")?.to_owned();
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let r = e2e::get(&format!("/api/runs/{id}?limit=1")).await;
        // A 503 (moto, busy with the queue, is also the Secrets Manager a cold instance of
        // the runs function reads) is asked again.
        if r.status.is_success() && r.body["status"] != "running" {
            let took = started.elapsed();
            ensure!(
                r.body["status"] == "completed",
                "the queued run ended {}: {}",
                r.body["status"],
                r.text
            );
            let migrated = r.body["counts"]["migrated"].as_u64().unwrap_or(0) as usize;
            ensure!(migrated >= expect, "expected {expect} migrated: {}", r.text);
            return Ok((took, r.body));
        }
        ensure!(
            Instant::now() < deadline,
            "the queued run did not end: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Planning 100,000 tenants
// ---------------------------------------------------------------------------------------------

/// Reads one HTTP/1.1 request (headers and a `Content-Length` body); `None` at the end of the
/// connection.
async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let total = end + 4 + length;
            while buf.len() < total {
                let mut chunk = [0u8; 65536];
                let n = socket.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..total].to_vec();
            buf.drain(..total);
            return Some(body);
        }
        let mut chunk = [0u8; 65536];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// An endpoint that answers SQS's JSON protocol for `SendMessageBatch` (and `SendMessage`),
/// accepting every entry, and counts the messages.
pub struct Sink {
    pub url: String,
    pub received: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    pub async fn start() -> Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let received = Arc::new(AtomicUsize::new(0));
        let counter = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some(body) = read_request(&mut socket, &mut buf).await {
                        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let answer = match request["Entries"].as_array() {
                            Some(entries) => {
                                counter.fetch_add(entries.len(), Ordering::Relaxed);
                                let ok: Vec<Value> = entries
                                    .iter()
                                    .map(|e| {
                                        json!({"Id": e["Id"], "MessageId": "sink",
                                               "MD5OfMessageBody": "00000000000000000000000000000000"})
                                    })
                                    .collect();
                                json!({"Successful": ok, "Failed": []})
                            }
                            None => {
                                counter.fetch_add(1, Ordering::Relaxed);
                                json!({"MessageId": "sink",
                                       "MD5OfMessageBody": "00000000000000000000000000000000"})
                            }
                        };
                        let text = answer.to_string();
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\n\
                             content-length: {}\r\n\r\n{text}",
                            text.len()
                        );
                        if socket.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(Sink {
            url,
            received,
            task,
        })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The floor: `n` messages of the planner's size sent to the sink with the planner's batching
/// (ten per call, sixteen calls at once), through the same SDK.
async fn floor(sink: &Sink, n: usize) -> Result<Duration> {
    let client = aws_sdk_sqs::Client::new(&e2e::local_aws(&sink.url).await);
    let queue = format!("{}/123456789012/bench-plan", sink.url);
    let bodies: Vec<String> = (0..n)
        .map(|i| {
            json!({"run_id": "6f1c0000-0000-4000-8000-000000000000",
                   "slug": format!("benchplan_{i:06}")})
            .to_string()
        })
        .collect();
    let started = Instant::now();
    let results: Vec<Result<()>> = stream::iter(bodies.chunks(10))
        .map(|chunk| {
            let client = client.clone();
            let queue = queue.clone();
            async move {
                let entries = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .message_body(b)
                            .build()
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                client
                    .send_message_batch()
                    .queue_url(queue)
                    .set_entries(Some(entries))
                    .send()
                    .await?;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let took = started.elapsed();
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(took)
}

/// Plans a queued run over `rows` registry rows (active tenants of `primary` with their
/// credentials recorded, one migration behind, without databases: planning never opens them) with the migrate-all binary of the
/// stack's build profile, its queue the sink; then removes the run and the rows.
pub async fn planning(rows: usize, profile: &str) -> Result<Vec<Row>> {
    let registry = e2e::registry().await;
    remove_plan_rows(&registry).await?;
    let started = Instant::now();
    registry
        .execute(
            "INSERT INTO tenants (name, slug, database_name, status, server, schema_version, \
               role_name, secret_name, credentials_secret_arn) \
             SELECT 'bench plan', s, 'dbtools_tenant_' || s, 'active', 'primary', 3, \
                    'dbtools_tenant_' || s, 'dbtools/tenants/' || s, 'arn:bench:' || s \
             FROM (SELECT 'benchplan_' || lpad(i::text, 6, '0') AS s \
                   FROM generate_series(1, $1::int) AS i) AS t",
            &[&(rows as i32)],
        )
        .await?;
    let insert = started.elapsed();
    let sink = Sink::start().await?;
    let queue = format!("{}/123456789012/bench-plan", sink.url);
    let api = e2e::runtime::RuntimeApi::start(json!({"inline": false, "canary": 0})).await;
    let started = Instant::now();
    let log_path = std::path::PathBuf::from(format!(
        "{}/bench-planner.log",
        std::env::var("DBTOOLS_LOCAL_DIR")?
    ));
    let planner = api.spawn_logged(
        profile,
        "migrate-all",
        &[
            ("AWS_ENDPOINT_URL_SQS", &sink.url),
            ("MIGRATE_QUEUE_URL", &queue),
        ],
        Some(&log_path),
    );
    let answer = api
        .wait_response(Duration::from_secs(600))
        .await
        .context("the planner answered")?;
    let took = started.elapsed();
    drop(planner);
    let outcome = async {
        ensure!(
            answer["status"] == "queued",
            "the planner did not queue: {answer}"
        );
        let queued = answer["counts"]["queued"].as_u64().unwrap_or(0) as usize;
        let sent = sink.received.load(Ordering::Relaxed);
        ensure!(
            queued >= rows && sent >= rows,
            "expected {rows} queued and sent, got {queued} and {sent}"
        );
        Ok(())
    }
    .await;
    let run_ms = answer["duration_ms"].as_f64().unwrap_or(0.0);
    if let Some(id) = answer["run_id"].as_str() {
        let id: uuid::Uuid = id.parse()?;
        registry
            .execute("DELETE FROM runs WHERE id = $1", &[&id])
            .await?;
    }
    outcome?;
    let rows_floor = ledger_rows_floor(&registry).await?;
    remove_plan_rows(&registry).await?;
    let floor = floor(&sink, rows).await?;
    let floor_ms = floor.as_secs_f64() * 1000.0;
    let log = std::fs::read_to_string(&log_path).context("the planner's log")?;
    let run = logged_p50s(&log, "migrate-all finished", &RUN_STEPS, 1)?;
    let sent = logged_p50s(&log, "planned and sent", &["ledger", "send"], 1)?;
    Ok(vec![
        Row::goal(
            &format!("planning a queued run over {rows} registry rows (SQS: a local sink)"),
            format!("{} ms", ms(run_ms)),
            format!(
                "{:.2}x its floor {} ms (the same {rows} messages straight from the SDK); {} ms \
             with the process start; rows inserted in {} ms",
                run_ms / floor_ms,
                ms(floor_ms),
                ms(took.as_secs_f64() * 1000.0),
                ms(insert.as_secs_f64() * 1000.0)
            ),
            "≤ 2x the floor",
            run_ms <= 2.0 * floor_ms,
        ),
        Row::info(
            "  … where planning's time goes (the planner's log)",
            format!("{} ms sending", ms(sent[1])),
            format!(
                "{}, ledger rows {} ms (a bare INSERT of the same rows: {} ms), messages sent {} \
                 ms (the floor's {} ms); the rest {} ms",
                named_ms(&RUN_STEPS, &run),
                ms(sent[0]),
                ms(rows_floor.as_secs_f64() * 1000.0),
                ms(sent[1]),
                ms(floor_ms),
                ms((run_ms - run.iter().sum::<f64>() - sent[0] - sent[1]).max(0.0))
            ),
        ),
    ])
}

/// The steps of a run's last line ("migrate-all finished") before its tenants.
pub const RUN_STEPS: [&str; 6] = [
    "system",
    "fleet",
    "servers",
    "reconcile",
    "lifecycle",
    "list",
];

/// The floor of the planner's ledger rows: the same rows (every bench tenant `pending` in one
/// wave) inserted by a bare client in one statement, under a throwaway run (closed, so that
/// nothing takes it for a run at work), then removed with it.
async fn ledger_rows_floor(registry: &tokio_postgres::Client) -> Result<Duration> {
    let run = uuid::Uuid::new_v4();
    registry
        .execute(
            "INSERT INTO runs (id, status, options, fingerprint, latest_version, finished_at) \
             VALUES ($1, 'completed', '{}', 'bench', 0, now())",
            &[&run],
        )
        .await?;
    let slugs: Vec<String> = registry
        .query(
            "SELECT slug FROM tenants WHERE slug LIKE 'benchplan\\_%'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let servers = vec!["primary"; slugs.len()];
    let waves = vec![1_i64; slugs.len()];
    let started = Instant::now();
    registry
        .execute(
            "INSERT INTO run_tenants (run_id, slug, server, status, wave) \
             SELECT $1, slug, server, 'pending', wave \
             FROM unnest($2::text[], $3::text[], $4::bigint[]) AS t(slug, server, wave)",
            &[&run, &slugs, &servers, &waves],
        )
        .await?;
    let took = started.elapsed();
    registry
        .execute("DELETE FROM runs WHERE id = $1", &[&run])
        .await?;
    Ok(took)
}

async fn remove_plan_rows(registry: &tokio_postgres::Client) -> Result<()> {
    registry
        .execute("DELETE FROM tenants WHERE slug LIKE 'benchplan\\_%'", &[])
        .await?;
    Ok(())
}
