//! Background services (reaper, reconciler) that take one step every
//! interval until asked to stop, logging a failed step and going on.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;

pub async fn every<F, Fut, T, E>(
    interval: Duration,
    mut stop: watch::Receiver<bool>,
    what: &str,
    mut step: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stop.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        if let Err(error) = step().await {
            tracing::warn!(%error, "{what} pass failed");
        }
    }
}
