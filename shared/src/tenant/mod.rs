//! One tenant's life, each step safe to repeat after a crash at any instruction: the registry's
//! `tenants` table ([`registry`]), creating ([`provision`]), leaving `active` and coming back
//! ([`lifecycle`]), its login and secret ([`access`]), the rotation of its password
//! ([`rotation`]), the template its database is copied from ([`template`]), and its moves to
//! another server ([`moves`]).

pub(crate) mod access;
pub mod lifecycle;
pub mod moves;
pub mod provision;
pub mod registry;
pub mod rotation;
pub(crate) mod template;
