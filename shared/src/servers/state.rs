//! Whether a server takes new tenants: `open`, or `draining` (it keeps the ones it has).

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    Open,
    Draining,
}

impl ServerState {
    pub(crate) fn parse(raw: &str) -> Option<ServerState> {
        match raw {
            "open" => Some(ServerState::Open),
            "draining" => Some(ServerState::Draining),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ServerState::Open => "open",
            ServerState::Draining => "draining",
        }
    }
}
