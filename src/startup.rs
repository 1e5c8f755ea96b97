//! Builds the application from configuration: stores, gate, HTTP router and
//! the background services, then runs them until asked to stop.

use crate::app::Dropgate;
use crate::config::ServeConfig;
use crate::gate::Gate;
use crate::http::{self, AppState, Tokens};
use crate::ledger::{self, Ledger};
use crate::limits::RateLimits;
use crate::reaper::Reaper;
use crate::worker::{Worker, WorkerLimits};
use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// In-flight requests get this long to finish after a stop signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

pub struct Application {
    listener: TcpListener,
    state: AppState,
    config: ServeConfig,
}

impl Application {
    /// Migrates the ledger, opens the gate and binds the listener.
    pub async fn build(config: ServeConfig) -> anyhow::Result<Self> {
        // The recorder first, so what start-up does (a gate rebuild) counts.
        let metrics = crate::telemetry::metrics();
        let app = connect(&config.stores)
            .await?
            .with_replica_wait(config.redis_wait_replicas, config.redis_wait_timeout_ms)
            .with_admission(config.admission);
        if let Err(error) = crate::rebuild::ensure_gate(&app).await {
            // Not fatal: the server answers 503 and the next request or the
            // reconciler builds the gate once Redis is back.
            tracing::warn!(%error, "gate not built at start-up");
        }
        metrics::gauge!("dropgate_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        let state = AppState {
            app,
            tokens: Arc::new(Tokens {
                admin: config.admin_token.clone(),
                storefront: config.storefront_tokens.clone(),
            }),
            limits: Arc::new(RateLimits::new(config.customer_rps, config.global_rps)),
            metrics,
            draining: Arc::default(),
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("DROPGATE_LISTEN: cannot listen on {}", config.listen))?;
        Ok(Self {
            listener,
            state,
            config,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn app(&self) -> &Dropgate {
        &self.state.app
    }

    /// Serves until `shutdown` completes, then drains: in-flight requests
    /// finish (bounded), background services stop after their current step.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut background: Vec<JoinHandle<()>> = Vec::new();
        if !self.config.no_worker {
            let worker = Worker::new(self.state.app.clone(), WorkerLimits::default())?;
            background.push(tokio::spawn(worker.run(stop_rx.clone())));
        }
        if !self.config.no_reaper {
            let reaper = Reaper::new(self.state.app.clone());
            background.push(tokio::spawn(reaper.run(stop_rx.clone())));
        }
        // With Postgres deciding admissions there is no gate to reconcile.
        let postgres_only = self.config.admission == crate::app::AdmissionMode::Postgres;
        if !self.config.no_reconciler && !postgres_only {
            let reconciler = crate::reconciler::Reconciler::new(self.state.app.clone());
            background.push(tokio::spawn(reconciler.run(stop_rx.clone())));
        }
        background.push(tokio::spawn(forget_idle_customers(
            self.state.limits.clone(),
            stop_rx.clone(),
        )));

        let draining = self.state.draining.clone();
        let router = http::router(self.state);
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
        let delay = Duration::from_millis(self.config.shutdown_delay_ms);
        let graceful = async move {
            shutdown.await;
            // Not ready any more, but still serving, so a load balancer can
            // stop sending before the listener closes: connections that
            // arrive after it closes would be refused or reset.
            draining.store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "stopping: not ready, still serving"
            );
            tokio::time::sleep(delay).await;
            tracing::info!("stopping: no new connections; draining in-flight requests");
            let _ = drained_tx.send(());
        };
        let server = axum::serve(self.listener, router).with_graceful_shutdown(graceful);
        let server = async move {
            let serving = tokio::spawn(async move { server.await });
            // Once the stop signal came, give in-flight requests a bounded time.
            let _ = drained_rx.await;
            match tokio::time::timeout(SHUTDOWN_GRACE, serving).await {
                Ok(joined) => joined
                    .map_err(anyhow::Error::from)?
                    .map_err(anyhow::Error::from),
                Err(_) => {
                    tracing::warn!("in-flight requests did not finish in time");
                    Ok(())
                }
            }
        };
        let result = server.await;
        let _ = stop_tx.send(true);
        for task in background {
            let _ = task.await;
        }
        tracing::info!("stopped");
        result
    }
}

async fn forget_idle_customers(limits: Arc<RateLimits>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = tick.tick() => limits.forget_idle(),
            _ = stop.changed() => return,
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

/// Migrates the ledger and connects both stores, for the commands that
/// run without the HTTP server.
pub async fn connect(stores: &crate::config::StoreConfig) -> anyhow::Result<Dropgate> {
    migrate(stores).await?;
    let ledger = Ledger::connect(&stores.database_url, stores.store_timeout())?;
    let gate = Gate::connect(
        &stores.redis_url,
        &stores.key_prefix,
        stores.store_timeout(),
    )?;
    Ok(Dropgate::new(gate, ledger, crate::clock::system()))
}

/// `dropgate migrate`: creates the ledger's database if missing and applies
/// the migrations.
pub async fn migrate(stores: &crate::config::StoreConfig) -> anyhow::Result<()> {
    ledger::migrate(&stores.database_url)
        .await
        .context("DATABASE_URL: cannot migrate the ledger")
}

/// `dropgate reconcile`: only the reconciler, until `shutdown`.
pub async fn run_reconciler(
    stores: crate::config::StoreConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let reconciler = crate::reconciler::Reconciler::new(connect(&stores).await?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let running = tokio::spawn(reconciler.run(stop_rx));
    shutdown.await;
    let _ = stop_tx.send(true);
    running.await?;
    Ok(())
}

/// `dropgate worker`: only the commit worker, until `shutdown`.
pub async fn run_worker(
    stores: crate::config::StoreConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let worker = Worker::new(connect(&stores).await?, WorkerLimits::default())?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let running = tokio::spawn(worker.run(stop_rx));
    shutdown.await;
    let _ = stop_tx.send(true);
    running.await?;
    Ok(())
}
