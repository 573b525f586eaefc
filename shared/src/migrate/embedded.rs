//! The migrations compiled into every function (refinery): `migrations_tenant/` for tenant
//! databases, `migrations_system/` for the system database (the registry).
//!
//! refinery records what it applied in `refinery_schema_history` inside each database and,
//! by default, refuses to run when that history diverges from (or misses) the embedded files:
//! released migrations are immutable, add a new file instead.

use refinery::{Migration, Runner};

mod tenant {
    refinery::embed_migrations!("../migrations_tenant");
    pub fn runner() -> refinery::Runner {
        migrations::runner()
    }
}

mod system {
    refinery::embed_migrations!("../migrations_system");
    pub fn runner() -> refinery::Runner {
        migrations::runner()
    }
}

/// refinery's history table, in every migrated database.
pub(crate) const HISTORY_TABLE: &str = "refinery_schema_history";

/// A runner for tenant databases: one transaction per migration, divergence and
/// missing-version checks on.
pub(crate) fn tenant_runner() -> Runner {
    tenant::runner()
        .set_abort_divergent(true)
        .set_abort_missing(true)
}

pub(crate) fn system_runner() -> Runner {
    system::runner()
        .set_abort_divergent(true)
        .set_abort_missing(true)
}

/// The embedded system migrations, in version order (refinery embeds them in the order of
/// their file names, where `V10` comes before `V2`).
pub(crate) fn system_migrations() -> Vec<Migration> {
    let mut all = system::runner().get_migrations().to_vec();
    all.sort_by_key(|m| m.version());
    all
}

/// The embedded tenant migrations, in version order.
pub(crate) fn tenant_migrations() -> Vec<Migration> {
    let mut all = tenant::runner().get_migrations().to_vec();
    all.sort_by_key(|m| m.version());
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_migrations_come_in_version_order_past_nine() {
        let versions: Vec<i32> = system_migrations().iter().map(|m| m.version()).collect();
        assert!(versions.len() >= 10, "{versions:?}");
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    }

    #[test]
    fn tenant_migrations_are_embedded_in_order() {
        let names: Vec<(i64, String)> = tenant_migrations()
            .iter()
            .map(|m| (i64::from(m.version()), m.name().to_owned()))
            .collect();
        assert!(names.len() >= 2, "{names:?}");
        assert_eq!(names[0], (1, "create_settings".to_owned()));
        assert_eq!(names[1], (2, "create_activity_log".to_owned()));
        assert_eq!(
            super::super::latest_tenant_version(),
            names.last().unwrap().0
        );
    }
}
