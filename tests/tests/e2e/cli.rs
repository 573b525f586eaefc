//! The `dbtools` CLI end to end: the real binary against the local stack, every command, its
//! tables and its JSON, its exit codes and the API's error messages, and what each command
//! changed in PostgreSQL. `runs watch` is also drawn in a real terminal (tmux).

use std::time::Duration;

use e2e::*;
use serde_json::{json, Value};

/// `pending 3` and the like, read from a line of `runs watch`.
fn count_in(line: &str, outcome: &str) -> Option<u64> {
    let rest = line.split(&format!("{outcome} ")).nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The `total` line of what `runs watch` draws.
fn total_line(pane: &str) -> String {
    pane.lines()
        .find(|l| l.starts_with("total"))
        .unwrap_or("")
        .to_owned()
}

/// Captures the pane until `f` holds (at most 90 s); the pane then.
async fn wait_pane(tmux: &Tmux, what: &str, f: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let pane = tmux.capture();
        if f(&pane) {
            return pane;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not seen; the pane:\n{pane}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn tenant_commands_create_read_move_and_end_a_tenant() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = cleanup.add(&unique_slug("cli"));

    let key = format!("key-{slug}");
    let create = [
        "tenants",
        "create",
        &slug,
        "--name",
        "CLI Corp",
        "--server",
        "primary",
        "--idempotency-key",
        &key,
    ];
    let out = dbtools(&create).await.ok();
    for needle in [
        slug.as_str(),
        "CLI Corp",
        "active",
        "primary",
        "dbtools_tenant_",
    ] {
        assert!(out.stdout.contains(needle), "{needle}: {}", out.stdout);
    }
    assert_eq!(registry_row(&slug).await, Some(("active".into(), latest())));
    assert!(database_exists(&database_name(&slug)).await);

    // The same key and body: the same tenant again, nothing new made.
    let again = dbtools(&[&["--output", "json"], &create[..]].concat())
        .await
        .ok()
        .json();
    assert_eq!(again["slug"], slug.as_str(), "{again}");
    let t = dbtools(&["--output", "json", "tenants", "get", &slug])
        .await
        .ok()
        .json();
    assert_eq!(t["id"], again["id"], "{t}");
    assert_eq!(
        (&t["name"], &t["status"]),
        (&json!("CLI Corp"), &json!("active")),
        "{t}"
    );
    let list = dbtools(&[
        "--output", "json", "tenants", "list", "--status", "active", "--all",
    ])
    .await
    .ok()
    .json();
    assert!(
        list["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["slug"] == slug.as_str()),
        "{list}"
    );
    assert_eq!(list["next_cursor"], Value::Null);
    let table = dbtools(&["tenants", "list", "--limit", "500", "--all"])
        .await
        .ok();
    assert!(table.stdout.contains(&slug), "{}", table.stdout);

    // Credentials: from the tenant's secret, the password masked unless asked for.
    let secret = read_secret(&secret_name(&slug)).await;
    let password = secret["password"].as_str().unwrap().to_owned();
    let masked = dbtools(&["tenants", "credentials", &slug]).await.ok();
    assert!(masked.stdout.contains("postgresql://"), "{}", masked.stdout);
    assert!(masked.stdout.contains("********"), "{}", masked.stdout);
    assert!(!masked.stdout.contains(&password), "the password is masked");
    let shown = dbtools(&[
        "--output",
        "json",
        "tenants",
        "credentials",
        &slug,
        "--show-password",
    ])
    .await
    .ok()
    .json();
    assert_eq!(shown["password"], password.as_str());
    let url = shown["connection_string"].as_str().unwrap();
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("the printed connection string connects");
    tokio::spawn(conn);
    let db: String = client
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(db, database_name(&slug));
    drop(client);

    // A move, followed to its end.
    let moved = dbtools(&["tenants", "move", &slug, "--to", "secondary", "--watch"])
        .await
        .ok();
    assert!(moved.stdout.contains("done"), "{}", moved.stdout);
    assert_eq!(tenant_server(&slug).await.as_deref(), Some("secondary"));

    // The move in `moves list` and `moves show`; a finished move cannot be cancelled.
    let moves = dbtools(&["--output", "json", "moves", "list", "--limit", "500"])
        .await
        .ok()
        .json();
    let mv = moves["moves"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["slug"] == slug.as_str())
        .unwrap_or_else(|| panic!("the move of {slug} is listed: {moves}"))
        .clone();
    assert_eq!(
        (&mv["from"], &mv["to"], &mv["state"]),
        (&json!("primary"), &json!("secondary"), &json!("done")),
        "{mv}"
    );
    let move_id = mv["id"].as_str().unwrap().to_owned();
    let listed = dbtools(&["moves", "list"]).await.ok();
    assert!(listed.stdout.contains(&move_id), "{}", listed.stdout);
    let shown_move = dbtools(&["moves", "show", &move_id]).await.ok();
    for needle in [slug.as_str(), "secondary", "done", "writes_refused_ms"] {
        assert!(
            shown_move.stdout.contains(needle),
            "{needle}: {}",
            shown_move.stdout
        );
    }
    dbtools(&["moves", "cancel", &move_id])
        .await
        .fails(1, "The move is done; only a running move can be cancelled");
    dbtools(&["moves", "show", "0b7e0000-0000-4000-8000-000000000000"])
        .await
        .fails(1, "error: Move not found");

    // Errors: the API's message, exit 1.
    dbtools(&["tenants", "get", "no_such_tenant_cli"])
        .await
        .fails(1, "Tenant 'no_such_tenant_cli' not found");
    dbtools(&["tenants", "create", "Bad-Slug"])
        .await
        .fails(1, "slug:");
    dbtools(&["tenants", "restore", &slug]).await.fails(
        1,
        &format!("Tenant '{slug}' is active; only a deleted tenant can be restored"),
    );
    dbtools(&["--api", "http://127.0.0.1:1", "tenants", "list"])
        .await
        .fails(1, "could not reach");
    // Usage errors, caught before any call: exit 2.
    dbtools(&["--api", "notaurl", "tenants", "list"])
        .await
        .fails(2, "--api \"notaurl\"");
    dbtools(&["--timeout", "0", "tenants", "list"])
        .await
        .fails(2, "--timeout");
    dbtools(&["moves", "show", "not-a-move"])
        .await
        .fails(2, "move id \"not-a-move\": expected a UUID");

    // Stdout: a reader gone (`| head`) is no failure; a full disk is one, said plainly.
    let closed = dbtools_to(&["tenants", "get", &slug], Stdout::ClosedPipe).await;
    assert_eq!(closed.code, 0, "{closed:#?}");
    assert!(!closed.stderr.contains("panicked"), "{closed:#?}");
    dbtools_to(&["tenants", "get", &slug], Stdout::DevFull)
        .await
        .fails(
            1,
            "error: could not write to stdout: No space left on device",
        );

    // Delete, restore, delete, purge: each seen in the registry.
    let deleted = dbtools(&["--output", "json", "tenants", "delete", &slug])
        .await
        .ok()
        .json();
    assert_eq!(deleted["status"], "deleted");
    assert_eq!(registry_row(&slug).await.unwrap().0, "deleted");
    let restored = dbtools(&["tenants", "restore", &slug]).await.ok();
    assert!(restored.stdout.contains("active"), "{}", restored.stdout);
    assert_eq!(registry_row(&slug).await.unwrap().0, "active");
    dbtools(&["tenants", "delete", &slug]).await.ok();
    let purged = dbtools(&["--output", "json", "tenants", "purge", &slug])
        .await
        .ok()
        .json();
    assert_eq!(purged["status"], "purged");
    assert_eq!(purged["credentials_secret_arn"], Value::Null);
    assert_eq!(registry_row(&slug).await.unwrap().0, "purged");
    assert!(!database_exists(&database_name(&slug)).await);
    assert!(servers_with_database(&database_name(&slug))
        .await
        .is_empty());
    dbtools(&["tenants", "credentials", &slug])
        .await
        .fails(1, "no secret");
}

/// Removes a server registered by the test when dropped (its tenants' rows first, should the
/// test have failed with some there).
struct RemoveServer(String);

impl Drop for RemoveServer {
    fn drop(&mut self) {
        let name = self.0.clone();
        block_on_own_thread(async move {
            let path = format!("/api/servers/{name}");
            let r = request_on_own_client(reqwest::Method::DELETE, &path, None).await;
            if r.status == reqwest::StatusCode::CONFLICT {
                let _ = registry()
                    .await
                    .execute("DELETE FROM tenants WHERE server = $1", &[&name])
                    .await;
                let _ = request_on_own_client(reqwest::Method::DELETE, &path, None).await;
            }
        });
    }
}

#[tokio::test]
async fn server_commands_add_set_drain_and_remove_a_server() {
    // Exclusive fleet: no run meets the server while it comes and goes.
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let cluster = ThrowawayCluster::start();
    let name = format!("cli-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let secret = format!("dbtools/servers/{name}");
    put_secret(
        &secret,
        &json!({"username": "postgres", "password": "throwaway"}),
    )
    .await;
    let _remove = RemoveServer(name.clone());
    let port = cluster.port.to_string();

    let added = dbtools(&[
        "servers",
        "add",
        &name,
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--secret-arn",
        &secret,
        "--max-tenants",
        "5",
        "--migrate-concurrency",
        "2",
    ])
    .await
    .ok();
    assert!(
        added.stdout.contains(&name) && added.stdout.contains("open"),
        "{}",
        added.stdout
    );
    let listed = dbtools(&["servers", "list"]).await.ok();
    for needle in ["primary", "secondary", name.as_str()] {
        assert!(
            listed.stdout.contains(needle),
            "{needle}: {}",
            listed.stdout
        );
    }
    let json_list = dbtools(&["--output", "json", "servers", "list"])
        .await
        .ok()
        .json();
    assert_eq!(json_list["servers"][0]["name"], "primary", "{json_list}");
    let set = dbtools(&[
        "--output",
        "json",
        "servers",
        "set",
        &name,
        "--max-tenants",
        "7",
        "--migrate-concurrency",
        "3",
    ])
    .await
    .ok()
    .json();
    assert_eq!(
        (&set["max_tenants"], &set["migrate_concurrency"]),
        (&json!(7), &json!(3))
    );
    let got = server(&name).await;
    assert_eq!(
        (&got["max_tenants"], &got["state"]),
        (&json!(7), &json!("open")),
        "{got}"
    );
    dbtools(&["servers", "set", &name])
        .await
        .fails(2, "nothing to change");
    dbtools(&["servers", "get", "no-such-server"])
        .await
        .fails(1, "Server 'no-such-server' not found");

    // A tenant there: the server cannot be removed until it is drained.
    let slug = cleanup.add(&unique_slug("clis"));
    dbtools(&["tenants", "create", &slug, "--server", &name])
        .await
        .ok();
    assert_eq!(tenant_server(&slug).await.as_deref(), Some(name.as_str()));
    dbtools(&["servers", "remove", &name]).await.fails(
        1,
        &format!("Server '{name}' holds tenants; drain it and purge them first"),
    );
    let drained = dbtools(&["servers", "drain", &name, "--watch"]).await.ok();
    assert!(drained.stdout.contains(&slug), "{}", drained.stdout);
    assert!(drained.stdout.contains("done"), "{}", drained.stdout);
    let now = tenant_server(&slug).await.unwrap();
    assert!(now == "primary" || now == "secondary", "{now}");
    assert_eq!(server(&name).await["state"], "draining");

    let removed = dbtools(&["--output", "json", "servers", "remove", &name])
        .await
        .ok()
        .json();
    assert_eq!(removed["name"], name.as_str());
    dbtools(&["servers", "get", &name])
        .await
        .fails(1, &format!("Server '{name}' not found"));
    drop(cluster);
}

#[tokio::test]
async fn run_commands_start_show_watch_and_retry_a_run() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slugs = create_tenants(&mut cleanup, "clir", 3).await;
    for slug in &slugs {
        undo_to_v1(slug).await;
    }
    // A view squats on the table V2 creates: this tenant fails.
    let broken = &slugs[1];
    connect_tenant(broken)
        .await
        .batch_execute("CREATE VIEW activity_log AS SELECT 1 AS squatter")
        .await
        .unwrap();
    let list = slugs.join(",");

    // A dry run changes nothing and lists what is pending.
    let dry = dbtools(&[
        "--output",
        "json",
        "runs",
        "start",
        "--dry-run",
        "--slugs",
        &list,
    ])
    .await
    .ok()
    .json();
    assert_eq!(dry["dry_run"], true, "{dry}");
    for slug in &slugs {
        let row = report_row(&dry, slug).unwrap_or_else(|| panic!("{slug} not in {dry}"));
        assert_eq!(row["status"], "pending", "{row}");
        assert_eq!(registry_row(slug).await, Some(("active".into(), 1)));
    }
    let dry_table = dbtools(&["runs", "start", "--dry-run", "--slugs", &list])
        .await
        .ok();
    assert!(dry_table.stdout.contains(&slugs[0]), "{}", dry_table.stdout);

    // The real run: a tenant fails, so does the command (exit 3), with the function's words.
    let failed = dbtools(&[
        "runs", "start", "--slugs", &list, "--inline", "--canary", "0",
    ])
    .await
    .fails(3, "TenantMigrationsFailed");
    assert!(failed.stderr.contains(broken.as_str()), "{failed:#?}");
    let runs = dbtools(&["--output", "json", "runs", "list", "--limit", "5"])
        .await
        .ok()
        .json();
    let run = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["options"]["slugs"][0] == slugs[0].as_str())
        .unwrap_or_else(|| panic!("the run is in the ledger: {runs}"));
    let id = run["id"].as_str().unwrap().to_owned();
    assert_eq!(run["status"], "failed", "{run}");
    let table = dbtools(&["runs", "list"]).await.ok();
    assert!(table.stdout.contains(&id), "{}", table.stdout);

    let shown = dbtools(&["--output", "json", "runs", "show", &id])
        .await
        .ok()
        .json();
    assert_eq!(run_tenant(&shown, broken)["status"], "failed", "{shown}");
    assert_eq!(
        run_tenant(&shown, &slugs[0])["status"],
        "migrated",
        "{shown}"
    );
    let only_failed = dbtools(&["runs", "show", &id, "--status", "failed"])
        .await
        .ok();
    assert!(
        only_failed.stdout.contains(broken.as_str()),
        "{}",
        only_failed.stdout
    );
    assert!(
        !only_failed.stdout.contains(&slugs[0]),
        "{}",
        only_failed.stdout
    );
    assert_eq!(
        registry_row(&slugs[0]).await,
        Some(("active".into(), latest()))
    );
    assert_eq!(registry_row(broken).await, Some(("active".into(), 1)));
    // Watching a run that ended failed: its summary, exit 3.
    let watched = dbtools(&["runs", "watch", &id])
        .await
        .fails(3, "ended failed");
    assert!(watched.stdout.contains(broken.as_str()), "{watched:#?}");
    dbtools(&["runs", "show", "0b7e0000-0000-4000-8000-000000000000"])
        .await
        .fails(1, "Run not found");
    dbtools(&["runs", "show", "6f1c"])
        .await
        .fails(2, "run id \"6f1c\": expected a UUID");
    dbtools(&["runs", "retry", &id, "--max-failures", "ten"])
        .await
        .fails(
            2,
            "--max-failures \"ten\": a count (3) or a percentage (10%)",
        );

    // Repaired, the run is retried (queued, followed to its end): it completes.
    connect_tenant(broken)
        .await
        .batch_execute("DROP VIEW activity_log")
        .await
        .unwrap();
    let retried = dbtools(&["runs", "retry", &id, "--queue", "--watch"])
        .await
        .ok();
    assert!(retried.stdout.contains("completed"), "{retried:#?}");
    let after = dbtools(&["--output", "json", "runs", "show", &id])
        .await
        .ok()
        .json();
    assert_eq!(after["status"], "completed", "{after}");
    assert_eq!(run_tenant(&after, broken)["status"], "migrated", "{after}");
    for slug in &slugs {
        assert_eq!(registry_row(slug).await, Some(("active".into(), latest())));
        assert_eq!(history_versions(slug).await, all_versions(), "{slug}");
    }
    dbtools(&["runs", "retry", &id]).await.fails(
        1,
        &format!(
            "migrate-all failed (InvalidRequest): invalid event: retry_run: run {id} is \
             completed and has no tenant to retry"
        ),
    );
}

#[tokio::test]
async fn runs_watch_draws_a_queued_run_moving_in_a_terminal() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let mut slugs = create_tenants_on(&mut cleanup, "cliw_p", 2, Some("primary")).await;
    slugs.extend(create_tenants_on(&mut cleanup, "cliw_s", 2, Some("secondary")).await);
    for slug in &slugs {
        undo_v4(slug).await;
    }
    // Every tenant's lock held: the queue's workers give their messages back (waiting is no
    // failure), so the run stays where it is until the test lets go. Each lock is a `Held`
    // session on the registry's database (where the product takes it): released when
    // dropped, even if the test fails on the way.
    let registry_db = std::env::var("SYSTEM_DB_NAME").unwrap_or_else(|_| "dbtools".into());
    let mut locks = Vec::new();
    for slug in &slugs {
        // A slug is lowercase letters, digits and `_`: safe as a literal.
        let sql = format!("SELECT pg_advisory_lock(1684173825, hashtext('{slug}'))");
        locks.push(Some(Held::on("primary", &registry_db, &sql).await));
    }
    let started = dbtools(&[
        "--output",
        "json",
        "runs",
        "start",
        "--slugs",
        &slugs.join(","),
        "--queue",
        "--canary",
        "0",
    ])
    .await
    .ok()
    .json();
    assert_eq!(started["status"], "queued", "{started}");
    let id = started["run_id"].as_str().unwrap().to_owned();
    let status_file = format!("{}/cli-watch-{id}.status", local_dir());
    let tmux = Tmux::start(
        &format!(
            "{} runs watch {id} --interval 0.5; echo $? > {status_file}; sleep 600",
            dbtools_bin().display()
        ),
        120,
        40,
    );
    // Start: every tenant pending, a bar per wave and per server.
    let start = wait_pane(&tmux, "the watch shows four tenants pending", |p| {
        count_in(&total_line(p), "pending") == Some(4)
    })
    .await;
    assert!(start.contains(&format!("run {id}: running")), "{start}");
    for bar in ["wave 1", "server primary", "server secondary"] {
        assert!(start.lines().any(|l| l.starts_with(bar)), "{bar}:\n{start}");
    }
    assert_eq!(
        count_in(&total_line(&start), "migrated"),
        Some(0),
        "{start}"
    );

    // Nothing moves while every lock is held: a watch told to give up after 2 s without
    // progress ends, exit 3, naming the run.
    let stalled = dbtools(&[
        "--stall-after",
        "2",
        "runs",
        "watch",
        &id,
        "--interval",
        "0.5",
    ])
    .await
    .fails(3, "has made no progress for 2 s");
    assert!(stalled.stderr.contains(&id), "{stalled:#?}");

    // Middle: three let go, migrated; one still held.
    for held in &mut locks[..3] {
        drop(held.take());
    }
    let middle = wait_pane(
        &tmux,
        "the watch shows three migrated and one pending",
        |p| {
            let t = total_line(p);
            count_in(&t, "migrated") == Some(3) && count_in(&t, "pending") == Some(1)
        },
    )
    .await;
    assert!(middle.contains("running"), "{middle}");

    // End: the last one migrated, the run completed, the watch exits 0.
    drop(locks.pop());
    let end = wait_pane(&tmux, "the watch ends", |p| p.contains("completed")).await;
    let t = total_line(&end);
    assert_eq!(
        (count_in(&t, "migrated"), count_in(&t, "pending")),
        (Some(4), Some(0)),
        "{end}"
    );
    let exited = eventually(Duration::from_secs(10), || async {
        std::fs::read_to_string(&status_file).is_ok()
    })
    .await;
    assert!(exited, "the watch exited:\n{end}");
    let status = std::fs::read_to_string(&status_file).unwrap();
    let _ = std::fs::remove_file(&status_file);
    assert_eq!(status.trim(), "0", "exit status; the pane:\n{end}");
    for slug in &slugs {
        assert_eq!(registry_row(slug).await, Some(("active".into(), latest())));
    }
}
