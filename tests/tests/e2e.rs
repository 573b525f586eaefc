//! End-to-end tests: the real binaries under `cargo lambda watch`, real HTTP on the real
//! paths, a real PostgreSQL, the real Secrets Manager client against the local endpoint.
//! Run through `make test`, which starts the stack (or reuses `make dev`'s).

mod e2e {
    mod api_create;
    mod api_read_delete;
    mod api_validation;
    mod cli;
    mod concurrency;
    mod credentials;
    mod events;
    mod faults;
    mod idempotency;
    mod isolation;
    mod live_migrations;
    mod metrics;
    mod migrate_all;
    mod moves;
    mod moves_online;
    mod provisioning_faults;
    mod queue;
    mod routes;
    mod runs;
    mod servers;
    mod template;
}
