//! Domain types that can only hold valid values (parse, don't validate): a tenant's slug,
//! name, database name and status, a server's name ([`ServerName`]), and the field-level
//! problem every parser reports ([`FieldError`]).
//!
//! A [`Slug`] is the only thing that ever reaches SQL as part of an identifier, and it is
//! still quoted there ([`quote_ident`]).

mod field;
mod server_name;

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};
use uuid::Uuid;

pub use field::FieldError;
pub use server_name::ServerName;

/// Every tenant database is named `dbtools_tenant_{slug}`.
pub const DATABASE_PREFIX: &str = "dbtools_tenant_";
pub const SLUG_MIN_LEN: usize = 3;
/// 15 bytes of prefix + 48 = 63, PostgreSQL's identifier limit (longer names are silently
/// truncated, which would let two slugs share a database).
pub const SLUG_MAX_LEN: usize = 48;
pub const NAME_MAX_CHARS: usize = 200;

/// Why a string is not a slug. Each variant is one rule of the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlugError {
    #[error("must be between {SLUG_MIN_LEN} and {SLUG_MAX_LEN} characters long (got {0})")]
    Length(usize),
    #[error("must start with a lowercase letter (a-z)")]
    FirstCharacter,
    #[error(
        "may contain only lowercase letters (a-z), digits (0-9) and underscores (found {0:?})"
    )]
    Character(char),
}

/// A tenant slug: a lowercase ASCII letter, then lowercase letters, digits or `_`,
/// 3 to 48 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Slug(String);

impl Slug {
    pub fn parse(raw: &str) -> Result<Slug, SlugError> {
        let len = raw.chars().count();
        let mut chars = raw.chars();
        match chars.next() {
            Some(c) if c.is_ascii_lowercase() => {}
            Some(_) => return Err(SlugError::FirstCharacter),
            None => return Err(SlugError::Length(0)),
        }
        if let Some(bad) =
            chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
        {
            return Err(SlugError::Character(bad));
        }
        if !(SLUG_MIN_LEN..=SLUG_MAX_LEN).contains(&len) {
            return Err(SlugError::Length(len));
        }
        Ok(Slug(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn database_name(&self) -> DatabaseName {
        DatabaseName(format!("{DATABASE_PREFIX}{}", self.0))
    }
}

impl DatabaseName {
    /// The opaque name of tenant `id` (`TENANT_NAMES=opaque`): the prefix, `0`, and the id's 32
    /// hex digits. A slug starts with a letter, so no slug's name is ever an opaque one.
    pub fn opaque(id: uuid::Uuid) -> DatabaseName {
        DatabaseName(format!("{DATABASE_PREFIX}0{}", id.simple()))
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of a tenant database, derived once from its slug and then stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseName(String);

impl DatabaseName {
    /// A name as the registry stored it (stored once, never recomputed).
    pub fn from_registry(stored: String) -> DatabaseName {
        DatabaseName(stored)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a quoted SQL identifier.
    pub fn quoted(&self) -> String {
        quote_ident(&self.0)
    }
}

impl fmt::Display for DatabaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Quotes an SQL identifier: wraps it in double quotes and doubles any quote inside.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty or only whitespace")]
    Empty,
    #[error("must be at most {NAME_MAX_CHARS} characters long (got {0})")]
    TooLong(usize),
    #[error("must not contain control characters")]
    ControlCharacter,
}

/// A display name: trimmed, 1 to 200 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantName(String);

impl TenantName {
    pub fn parse(raw: &str) -> Result<TenantName, NameError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(NameError::Empty);
        }
        if trimmed.chars().any(char::is_control) {
            return Err(NameError::ControlCharacter);
        }
        let len = trimmed.chars().count();
        if len > NAME_MAX_CHARS {
            return Err(NameError::TooLong(len));
        }
        Ok(TenantName(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated request to create a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTenant {
    pub name: TenantName,
    pub slug: Slug,
    /// The server the request asks for; `None`: placement chooses.
    pub server: Option<ServerName>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    Provisioning,
    Active,
    Deleted,
    /// Database, login and secret removed; the row stays so that the slug is never reused.
    Purged,
}

impl TenantStatus {
    pub const ALL: [TenantStatus; 4] = [
        TenantStatus::Provisioning,
        TenantStatus::Active,
        TenantStatus::Deleted,
        TenantStatus::Purged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Provisioning => "provisioning",
            TenantStatus::Active => "active",
            TenantStatus::Deleted => "deleted",
            TenantStatus::Purged => "purged",
        }
    }

    pub fn parse(raw: &str) -> Option<TenantStatus> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

/// A tenant as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub slug: String,
    pub status: TenantStatus,
    pub database_name: String,
    pub schema_version: i64,
    /// The tenant's secret (its login's credentials); `None` where there is none (a purged
    /// tenant, or one made before logins existed until migrate-all makes it one).
    pub credentials_secret_arn: Option<String>,
    /// The server that holds its database (`None` only for a purged tenant whose server was
    /// removed since).
    pub server: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub deleted_at: Option<DateTime<Utc>>,
    /// The move running for it, if any (`GET /api/moves/{id}`).
    pub move_id: Option<Uuid>,
}

pub(crate) fn rfc3339<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

pub(crate) fn rfc3339_opt<S: Serializer>(
    t: &Option<DateTime<Utc>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slug_accepts_the_documented_alphabet() {
        for ok in ["abc", "acme", "a_1", "acme_corp_2026", "z00"] {
            assert_eq!(Slug::parse(ok).map(|s| s.0), Ok(ok.to_owned()), "{ok}");
        }
    }

    #[test]
    fn slug_length_bounds_are_3_and_48() {
        assert_eq!(Slug::parse(""), Err(SlugError::Length(0)));
        assert_eq!(Slug::parse("ab"), Err(SlugError::Length(2)));
        assert!(Slug::parse("abc").is_ok());
        let max = format!("a{}", "b".repeat(47));
        assert!(Slug::parse(&max).is_ok());
        assert_eq!(max.len() + DATABASE_PREFIX.len(), 63);
        let over = format!("a{}", "b".repeat(48));
        assert_eq!(Slug::parse(&over), Err(SlugError::Length(49)));
    }

    #[test]
    fn slug_must_start_with_a_lowercase_letter() {
        for bad in ["1abc", "_abc", "Abc", "-abc", " abc", "ébc"] {
            assert_eq!(Slug::parse(bad), Err(SlugError::FirstCharacter), "{bad}");
        }
    }

    #[test]
    fn slug_rejects_characters_outside_the_alphabet() {
        assert_eq!(Slug::parse("acMe"), Err(SlugError::Character('M')));
        assert_eq!(Slug::parse("ac-me"), Err(SlugError::Character('-')));
        assert_eq!(Slug::parse("ac me"), Err(SlugError::Character(' ')));
        assert_eq!(Slug::parse("acme\""), Err(SlugError::Character('"')));
        assert_eq!(Slug::parse("acmé"), Err(SlugError::Character('é')));
        assert_eq!(Slug::parse("acme\0"), Err(SlugError::Character('\0')));
    }

    #[test]
    fn character_rule_is_reported_before_length() {
        // "a-" is both too short and has a bad character; the character is the real problem.
        assert_eq!(Slug::parse("a-"), Err(SlugError::Character('-')));
    }

    #[test]
    fn database_name_is_prefixed_and_quoted() {
        let opaque = DatabaseName::opaque(uuid::Uuid::nil());
        assert_eq!(
            opaque.as_str(),
            "dbtools_tenant_000000000000000000000000000000000"
        );
        assert!(opaque.as_str().len() <= 63);
        assert!(Slug::parse(&opaque.as_str()["dbtools_tenant_".len()..]).is_err());
        let slug = Slug::parse("acme").unwrap();
        assert_eq!(slug.database_name().as_str(), "dbtools_tenant_acme");
        assert_eq!(slug.database_name().quoted(), "\"dbtools_tenant_acme\"");
    }

    #[test]
    fn quote_ident_doubles_embedded_quotes() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("plain"), "\"plain\"");
    }

    #[test]
    fn name_is_trimmed_and_bounded() {
        assert_eq!(
            TenantName::parse("  Acme Corp  ").unwrap().as_str(),
            "Acme Corp"
        );
        assert_eq!(TenantName::parse(""), Err(NameError::Empty));
        assert_eq!(TenantName::parse(" \t "), Err(NameError::Empty));
        assert!(TenantName::parse(&"x".repeat(200)).is_ok());
        assert_eq!(
            TenantName::parse(&"x".repeat(201)),
            Err(NameError::TooLong(201))
        );
        // Counted in characters, not bytes.
        assert!(TenantName::parse(&"é".repeat(200)).is_ok());
        // Length is measured after trimming.
        assert!(TenantName::parse(&format!("  {}  ", "x".repeat(200))).is_ok());
    }

    #[test]
    fn name_rejects_control_characters() {
        assert_eq!(
            TenantName::parse("Acme\nCorp"),
            Err(NameError::ControlCharacter)
        );
        assert_eq!(
            TenantName::parse("Acme\u{7f}"),
            Err(NameError::ControlCharacter)
        );
        assert_eq!(
            TenantName::parse("Acme\u{0}"),
            Err(NameError::ControlCharacter)
        );
    }

    #[test]
    fn status_round_trips() {
        for s in TenantStatus::ALL {
            assert_eq!(TenantStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(TenantStatus::parse("Active"), None);
    }

    #[test]
    fn tenant_serializes_as_the_contract_shows() {
        let t = Tenant {
            id: Uuid::nil(),
            name: "Acme Corp".into(),
            slug: "acme".into(),
            status: TenantStatus::Active,
            database_name: "dbtools_tenant_acme".into(),
            schema_version: 2,
            credentials_secret_arn: None,
            server: Some("primary".into()),
            created_at: DateTime::parse_from_rfc3339("2026-01-17T10:00:00Z")
                .unwrap()
                .to_utc(),
            deleted_at: None,
            move_id: None,
        };
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            serde_json::json!({"id": "00000000-0000-0000-0000-000000000000", "name": "Acme Corp",
                "slug": "acme", "status": "active", "database_name": "dbtools_tenant_acme",
                "schema_version": 2, "credentials_secret_arn": null, "server": "primary",
                "created_at": "2026-01-17T10:00:00Z", "deleted_at": null, "move_id": null})
        );
    }
}
