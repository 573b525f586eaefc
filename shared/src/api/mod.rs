//! The HTTP contract without an HTTP library: request parsing (bodies, query strings, path
//! slugs) and the one place where operation errors become status codes and error bodies.
//!
//! Error bodies never carry SQL, host names, stack traces or secrets: the cause chain of a
//! 5xx goes to the log, the client gets a fixed sentence.
//!
//! | module     | what it holds                                                              |
//! |------------|----------------------------------------------------------------------------|
//! | `response` | [`ApiResponse`]: a status and a JSON body                                  |
//! | `error`    | codes, statuses and bodies; the one mapping from every operation error     |
//! | `body`     | request bodies before any field is read; [`MAX_BODY_BYTES`]                |
//! | `query`    | query strings (limits, cursors, pages); the slug or name in the path       |
//! | `deadline` | an operation within the deadline, once more on a dead connection, answered |
//! | `server_body` | the `POST` and `PATCH` bodies of `/api/servers`, each problem named with its field |
//! | `tenants`  | `/api/tenants`: create (and its body), list, get, delete, restore, purge   |
//! | `servers`  | `/api/servers`: list, get, register, update, remove                        |
//! | `runs`     | `/api/runs`: the run ledger, and one run with a page of its tenants        |
//! | `moves`    | `/api/moves`, `POST /api/tenants/{slug}/move`, `POST /api/servers/{name}/drain` |

mod body;
mod deadline;
mod error;
mod moves;
mod query;
mod response;
mod runs;
mod server_body;
mod servers;
mod tenants;

pub use body::MAX_BODY_BYTES;
pub use moves::{cancel_move, drain_server, get_move, list_moves, start_move};
pub use response::ApiResponse;
pub use runs::{get_run, list_runs};
pub use servers::{get_server, list_servers, register_server, remove_server, update_server};
pub use tenants::{create, delete, get, list, parse_create_body, purge, restore};

use error::{ApiError, ErrorCode};

/// Bodies for requests that reach a function on a method or path it does not serve.
pub fn route_not_found() -> ApiResponse {
    ApiError::new(ErrorCode::NotFound, "No such route").into_response()
}
