//! The bench's sizes, read from the environment once at start-up (the defaults are the
//! sizes docs/performance.md reports).

use anyhow::{Context, Result};

pub struct Settings {
    pub tenants: usize,
    pub list_tenants: usize,
    pub floor_samples: usize,
    pub list_samples: usize,
    pub cold_samples: usize,
    pub plan_rows: usize,
    pub profile: String,
}

impl Settings {
    /// Reads the sizes; warns when the stack serves other than release builds, which the
    /// goals are for.
    pub fn from_env() -> Result<Settings> {
        let s = Settings {
            tenants: env_usize("BENCH_TENANTS", 1000)?.max(1),
            list_tenants: env_usize("BENCH_LIST_TENANTS", 10_000)?.max(100),
            floor_samples: env_usize("BENCH_FLOOR_SAMPLES", 50)?.max(1),
            list_samples: env_usize("BENCH_LIST_SAMPLES", 200)?.max(1),
            cold_samples: env_usize("BENCH_COLD_SAMPLES", 15)?.max(1),
            plan_rows: env_usize("BENCH_PLAN_ROWS", 100_000)?.max(1),
            profile: std::env::var("DBTOOLS_BUILD_PROFILE").unwrap_or_else(|_| "unknown".into()),
        };
        if s.profile != "release" {
            eprintln!(
                "warning: the stack serves {} builds; the goals are for release builds \
                 (make bench)",
                s.profile
            );
        }
        Ok(s)
    }
}

pub fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{name} must be a number, got {v:?}")),
    }
}
