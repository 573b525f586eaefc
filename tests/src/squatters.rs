//! Squatters: databases of a tenant's name that somebody else than the product made, which
//! the product must never adopt, migrate or drop.

use crate::{
    env::SERVERS,
    pg::{admin_on, connect_on},
};

/// Makes a database of `name` by hand on every local server, with data in it, as somebody else
/// than the product would (a squatter): its OID is PostgreSQL's choice, not the registry's.
/// On every server, so that placement cannot sidestep it.
pub async fn plant_squatter(name: &str) {
    for server in SERVERS {
        admin_on(server)
            .await
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create the squatter");
        connect_on(server, name)
            .await
            .batch_execute("CREATE TABLE precious (v int); INSERT INTO precious VALUES (42)")
            .await
            .expect("fill the squatter");
    }
}

/// The squatters [`plant_squatter`] made are as they were: their data, and no migration ran
/// in them.
pub async fn assert_squatter_untouched(name: &str) {
    for server in SERVERS {
        assert_squatter_untouched_on(server, name).await;
    }
}

async fn assert_squatter_untouched_on(server: &str, name: &str) {
    let squatter = connect_on(server, name).await;
    let data: Vec<i32> = squatter
        .query("SELECT v FROM precious", &[])
        .await
        .expect("read the squatter")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(data, [42], "{name}: data untouched");
    let migrated: bool = squatter
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await
        .expect("look for a history")
        .get(0);
    assert!(
        !migrated,
        "{name}: no migration ran in a database we did not make"
    );
}
