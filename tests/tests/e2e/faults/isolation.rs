//! A tenant's login as an attacker while tenants are being made: it polls the catalog for new
//! databases (and templates) and tries to enter each one, at every instant of a create,
//! including one held between its database and its login and one killed there.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use serde_json::Value;

use super::*;

/// A tenant's login polling its server for databases that are not its own and trying each.
struct Attacker {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u32, Vec<String>)>,
}

impl Attacker {
    async fn start(slug: &str) -> Attacker {
        let arn = get(&format!("/api/tenants/{slug}")).await.body["credentials_secret_arn"]
            .as_str()
            .unwrap()
            .to_owned();
        let secret: Value = read_secret(&arn).await;
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        let task = tokio::spawn(async move {
            let own = connect_as(&secret, None).await.expect("its own database");
            let (mut polls, mut entered, mut kept) = (0u32, Vec::new(), Vec::new());
            while !done.load(Ordering::Relaxed) {
                polls += 1;
                // The newest first: a database being made is the one to catch.
                let names: Vec<String> = own
                    .query(
                        "SELECT datname::text FROM pg_database \
                         WHERE datname LIKE 'dbtools\\_%' AND datname <> current_database() \
                         ORDER BY oid DESC",
                        &[],
                    )
                    .await
                    .expect("the catalog is readable")
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                for name in names {
                    if let Ok(c) = connect_as(&secret, Some(&name)).await {
                        // In: it would plant a row, and keep the session (a REVOKE ends none).
                        let _ = c
                            .batch_execute(
                                "INSERT INTO settings (key, value) VALUES ('planted', '1')",
                            )
                            .await;
                        entered.push(name);
                        kept.push(c);
                    }
                }
                // Often, without starving the creates of the machine's two cores.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (polls, entered)
        });
        Attacker { stop, task }
    }

    async fn stop(self) -> (u32, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// The database's state as PostgreSQL has it: whether it takes connections, and whether
/// `PUBLIC` may connect.
async fn database_state(server: &str, name: &str) -> (bool, bool) {
    let row = admin_on(server)
        .await
        .query_one(
            "SELECT datallowconn, has_database_privilege('public', oid, 'CONNECT') \
             FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn a_tenant_login_polling_for_new_databases_never_opens_one() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let on_primary = create_tenants_on(&mut cleanup, "atk_p", 1, Some("primary")).await;
    let on_secondary = create_tenants_on(&mut cleanup, "atk_s", 1, Some("secondary")).await;
    let attackers = [
        Attacker::start(&on_primary[0]).await,
        Attacker::start(&on_secondary[0]).await,
    ];

    // Twelve creates. The first three on the secondary wait between their database and their
    // login (its role catalog held): the window an attacker needs, held open.
    let catalog = hold_role_catalog("secondary").await;
    let base = unique_slug("victim");
    let held: Vec<String> = (0..3)
        .map(|i| cleanup.add(&format!("{base}_h{i}")))
        .collect();
    let creates: Vec<_> = held
        .iter()
        .map(|slug| {
            let body = json!({"name": "Victim", "slug": slug, "server": "secondary"});
            tokio::spawn(async move { post_tenant(&body).await })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(20), || async {
            lock_waiters("secondary", "create-tenant", "CREATE ROLE").await == 3
        })
        .await,
        "the three creates reached their logins"
    );
    // Their databases exist, closed to everybody, while the attackers poll.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for slug in &held {
        let (open, _) = database_state("secondary", &database_name(slug)).await;
        assert!(!open, "{slug}: made closed, to everybody");
    }
    drop(catalog);
    for create in creates {
        let r = create.await.unwrap();
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let rest = [
        create_tenants_on(&mut cleanup, "victim_s", 3, Some("secondary")).await,
        create_tenants_on(&mut cleanup, "victim_p", 6, Some("primary")).await,
    ]
    .concat();
    for slug in held.iter().chain(&rest) {
        let server = tenant_server(slug).await.unwrap();
        assert_eq!(
            database_state(&server, &database_name(slug)).await,
            (true, false),
            "{slug}: open, to its own login only"
        );
    }

    // A create killed between its database and its login: the database stays closed until
    // reconcile opens it, to its own login alone.
    let killed = cleanup.add(&unique_slug("victim_k"));
    let key = format!("k-{killed}");
    let catalog = hold_role_catalog("secondary").await;
    let (api, mut child) = start_create(&killed, "secondary", &key).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            lock_waiters("secondary", "create-tenant", "CREATE ROLE").await == 1
        })
        .await,
        "the create reached its login"
    );
    child.kill().await.expect("SIGKILL create-tenant");
    await_cancelled("secondary", "create-tenant").await;
    drop(catalog);
    assert!(api.response.lock().await.is_none(), "it never answered");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (open, _) = database_state("secondary", &database_name(&killed)).await;
    assert!(!open, "left closed by the killed create");
    tokio::time::sleep(SHORT_LEASE).await;
    let r = post_with_key(
        &json!({"name": "Killed", "slug": killed, "server": "secondary"}),
        &key,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        database_state("secondary", &database_name(&killed)).await,
        (true, false)
    );

    for attacker in attackers {
        let (polls, entered) = attacker.stop().await;
        assert!(polls > 20, "the attacker polled ({polls} times)");
        assert_eq!(entered, Vec::<String>::new(), "entered after {polls} polls");
    }
    let mut all = [on_primary, on_secondary, held, rest].concat();
    all.push(killed);
    assert_invariants(&all).await;
}
