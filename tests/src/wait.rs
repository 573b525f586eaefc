//! Waiting for what the stack does in the background (a queued run, a move, a lease).

use std::time::{Duration, Instant};

/// Polls `f` every 200 ms until it is true (`true`) or `within` has passed (`false`).
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
