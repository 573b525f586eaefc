//! A server's name, as the registry and the API spell it.

use std::fmt;

/// A server's name: a lowercase letter, then lowercase letters, digits, `_` or `-`; at most
/// 63 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerName(String);

impl ServerName {
    pub fn parse(raw: &str) -> Result<ServerName, String> {
        let mut chars = raw.chars();
        match chars.next() {
            Some(c) if c.is_ascii_lowercase() => {}
            _ => return Err("must start with a lowercase letter (a-z)".into()),
        }
        if raw.len() > 63 {
            return Err(format!(
                "must be at most 63 characters long (got {})",
                raw.len()
            ));
        }
        if let Some(bad) = chars
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
        {
            return Err(format!(
                "may contain only lowercase letters, digits, '_' and '-' (found {bad:?})"
            ));
        }
        Ok(ServerName(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        for ok in ["primary", "eu-west-1a", "rds_2", "s"] {
            assert!(ServerName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Primary", "1a", "a b", "a.b", &"a".repeat(64)] {
            assert!(ServerName::parse(bad).is_err(), "{bad}");
        }
    }
}
