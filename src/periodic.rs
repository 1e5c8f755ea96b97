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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn steps_once_per_interval_past_a_failure_until_stopped() {
        let (stop, stopped) = watch::channel(false);
        let steps = Arc::new(AtomicU32::new(0));
        let counted = steps.clone();
        let service = tokio::spawn(every(
            Duration::from_millis(200),
            stopped,
            "test",
            move || {
                let step = counted.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    if step == 2 {
                        Err("the second step fails")
                    } else {
                        Ok(())
                    }
                }
            },
        ));

        // Steps at 0, 200 and 400 ms of the paused clock; 450 ms is before
        // the fourth.
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(steps.load(Ordering::SeqCst), 3);
        stop.send(true).unwrap();
        service.await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(steps.load(Ordering::SeqCst), 3, "no step after the stop");
    }
}
