//! Tenant schema versions: the migrations of this release (the files in
//! `migrations_tenant/`), what a tenant's history records, and undoing migrations by hand to
//! leave a tenant behind as an older release would.

use crate::pg::{connect_tenant, registry};

/// The tenant migrations of this release (the files in `migrations_tenant/`), in order.
pub fn all_versions() -> Vec<i32> {
    migration_versions("migrations_tenant")
}

/// The versions of the migration files in a folder of the repository, in order.
pub fn migration_versions<V: std::str::FromStr + Ord>(folder: &str) -> Vec<V> {
    let dir = format!("{}/../{folder}", env!("CARGO_MANIFEST_DIR"));
    let mut versions: Vec<V> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|f| {
            let name = f.ok()?.file_name().into_string().ok()?;
            name.strip_prefix('V')?.split("__").next()?.parse().ok()
        })
        .collect();
    versions.sort_unstable();
    versions
}

/// The latest tenant migration.
pub fn latest() -> i32 {
    *all_versions().last().expect("tenant migrations")
}

/// Undoes every migration after V1 by hand in a tenant database (what V3 granted, the table V2
/// made, their history rows); the registry says version 1, as a tenant left behind by a
/// release would be.
pub async fn undo_to_v1(slug: &str) {
    connect_tenant(slug)
        .await
        .batch_execute(
            "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM dbtools_tenant_rw; \
             REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM dbtools_tenant_rw; \
             ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM dbtools_tenant_rw; \
             ALTER DEFAULT PRIVILEGES IN SCHEMA public \
               REVOKE ALL ON SEQUENCES FROM dbtools_tenant_rw; \
             DROP TABLE activity_log; DELETE FROM refinery_schema_history WHERE version > 1",
        )
        .await
        .expect("undo the migrations after V1");
    registry()
        .await
        .execute(
            "UPDATE tenants SET schema_version = 1 WHERE slug = $1",
            &[&slug],
        )
        .await
        .expect("registry at V1");
}

/// Puts a tenant back before V4, as a release that adds it finds it: V4's column, its
/// concurrently built index and its history row gone, the registry at version 3.
pub async fn undo_v4(slug: &str) {
    connect_tenant(slug)
        .await
        .batch_execute(
            "DROP INDEX IF EXISTS activity_log_actor_idx; \
             ALTER TABLE activity_log DROP COLUMN IF EXISTS actor_id; \
             DELETE FROM refinery_schema_history WHERE version >= 4",
        )
        .await
        .unwrap_or_else(|e| panic!("undo V4 in {slug}: {e}"));
    registry()
        .await
        .execute(
            "UPDATE tenants SET schema_version = 3 WHERE slug = $1",
            &[&slug],
        )
        .await
        .expect("registry at V3");
}

/// Versions recorded in a tenant's history, in order, duplicates included.
pub async fn history_versions(slug: &str) -> Vec<i32> {
    connect_tenant(slug)
        .await
        .query(
            "SELECT version FROM refinery_schema_history ORDER BY version",
            &[],
        )
        .await
        .expect("read the history")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

pub async fn has_table(slug: &str, table: &str) -> bool {
    connect_tenant(slug)
        .await
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = 'public' AND tablename = $1)",
            &[&table],
        )
        .await
        .expect("query pg_tables")
        .get(0)
}
