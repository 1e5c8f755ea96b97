//! `dropgate dev`: the zero-setup local run. Finds or starts Redis and
//! Postgres, migrates, seeds a demo drop, prints how to use it, serves.

mod process;
mod redis_server;
pub mod services;

pub use process::free_port;
pub use redis_server::RedisServer;

use crate::config::{DevConfig, ServeConfig, StoreConfig};
use crate::domain::{SkuId, SkuSettings};
use crate::startup::{Application, shutdown_signal};
use anyhow::Context;

/// Tokens `dev` uses; printed at start. Only for local runs.
pub const DEV_ADMIN_TOKEN: &str = "dev-admin-token";
pub const DEV_STOREFRONT_TOKEN: &str = "dev-storefront-token";
pub const DEMO_SKU: &str = "demo-drop";

pub async fn run(config: DevConfig) -> anyhow::Result<()> {
    let services = services::ensure_services("dropgate").await?;
    for note in &services.notes {
        println!("{note}");
    }
    let serve = ServeConfig {
        stores: StoreConfig {
            database_url: services.database_url.clone(),
            redis_url: services.redis_url.clone(),
            ..StoreConfig::default()
        },
        listen: config.listen,
        admin_token: Some(DEV_ADMIN_TOKEN.to_owned()),
        storefront_tokens: vec![DEV_STOREFRONT_TOKEN.to_owned()],
        ..ServeConfig::default()
    };
    let app = Application::build(serve).await?;
    let sku = SkuId::parse(DEMO_SKU).map_err(|e| anyhow::anyhow!("{e}"))?;
    if app.app().sku(&sku).await?.is_none() {
        let settings = SkuSettings::parse(config.demo_stock, Some(2), Some(600_000), Some(1))
            .map_err(|errors| anyhow::anyhow!("--demo-stock: {}", errors[0].message))?;
        app.app()
            .put_sku(&sku, settings)
            .await
            .context("seeding the demo drop")?;
    }
    let url = format!("http://{}", app.local_addr()?);
    println!(
        "\ndropgate dev is serving at {url}\n\
         \n  admin token:      {DEV_ADMIN_TOKEN}\
         \n  storefront token: {DEV_STOREFRONT_TOKEN}\
         \n  demo SKU:         {DEMO_SKU} ({} units, 2 per customer)\n\
         \nHold one:\n  curl -si -X POST {url}/v1/skus/{DEMO_SKU}/holds \\\n    \
         -H 'Authorization: Bearer {DEV_STOREFRONT_TOKEN}' -H 'Idempotency-Key: try-1' \\\n    \
         -H 'Content-Type: application/json' -d '{{\"customer_id\":\"c-1\",\"quantity\":1}}'\n\
         \nCtrl-C stops it{}.\n",
        config.demo_stock,
        if services.started_any() {
            " and the stores it started"
        } else {
            ""
        }
    );
    let result = app.run_until_stopped(shutdown_signal()).await;
    drop(services);
    result
}
