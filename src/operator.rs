//! `dropgate skus ...` and `dropgate holds ...`: the operator's commands.
//! They go straight to the stores through the same operations the API uses,
//! so they work while the HTTP server is down or unreachable.

use crate::app::{HoldOutcome, SkuOutcome};
use crate::config::{
    DeadLettersCommand, DeadLettersConfig, HoldsCommand, HoldsConfig, SkusCommand, SkusConfig,
};
use crate::domain::{SkuId, SkuSettings};
use crate::http::{Hold, Sku};
use crate::ledger::Resolution;
use anyhow::{anyhow, bail};

pub async fn skus(config: SkusConfig) -> anyhow::Result<()> {
    let app = crate::startup::connect(&config.stores).await?;
    crate::rebuild::ensure_gate(&app).await?;
    match config.command {
        SkusCommand::List => {
            let mut after: Option<SkuId> = None;
            loop {
                let page = app.skus(after.as_ref(), 500).await?;
                for sku in &page {
                    println!("{}", serde_json::to_string(&Sku::from(sku.clone()))?);
                }
                match page.last() {
                    Some(last) if page.len() == 500 => after = Some(last.sku.clone()),
                    _ => return Ok(()),
                }
            }
        }
        SkusCommand::Put {
            sku,
            on_hand,
            per_customer_limit,
            hold_ttl_ms,
            max_extensions,
        } => {
            let sku = SkuId::parse(&sku).map_err(|e| anyhow!("{e}"))?;
            let settings =
                SkuSettings::parse(on_hand, per_customer_limit, hold_ttl_ms, max_extensions)
                    .map_err(|errors| {
                        anyhow!(
                            "{}",
                            errors
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join("; ")
                        )
                    })?;
            print_sku_outcome(app.put_sku(&sku, settings).await?)
        }
    }
}

fn print_sku_outcome(outcome: SkuOutcome) -> anyhow::Result<()> {
    match outcome {
        SkuOutcome::Created(sku) | SkuOutcome::Updated(sku) => {
            println!("{}", serde_json::to_string(&Sku::from(sku))?);
            Ok(())
        }
        SkuOutcome::Conflict {
            requested,
            held,
            sold,
        } => {
            bail!("on_hand {requested} would be below held {held} + sold {sold}")
        }
        SkuOutcome::NotFound => bail!("no such SKU"),
        // The command line sends no idempotency key.
        SkuOutcome::Replayed { .. } | SkuOutcome::KeyReused => {
            bail!("unexpected idempotency answer")
        }
    }
}

pub async fn holds(config: HoldsConfig) -> anyhow::Result<()> {
    let app = crate::startup::connect(&config.stores).await?;
    match config.command {
        HoldsCommand::Show { hold_id } => {
            let id = uuid::Uuid::try_parse(&hold_id)
                .ok()
                .and_then(|uuid| app.hold_id(uuid))
                .ok_or_else(|| anyhow!("{hold_id}: not a hold id this ledger issued"))?;
            match app.hold(id).await? {
                HoldOutcome::Ok(hold) => {
                    println!("{}", serde_json::to_string_pretty(&Hold::from(hold))?);
                    Ok(())
                }
                _ => bail!("{hold_id}: no such hold"),
            }
        }
    }
}

pub async fn dead_letters(config: DeadLettersConfig) -> anyhow::Result<()> {
    let app = crate::startup::connect(&config.stores).await?;
    let (event_id, resolution, note) = match config.command {
        DeadLettersCommand::List { limit } => {
            for letter in app.ledger.dead_letters(limit).await? {
                println!("{}", serde_json::to_string(&letter)?);
            }
            return Ok(());
        }
        DeadLettersCommand::Retry { event_id, note } => (event_id, Resolution::Retry, note),
        DeadLettersCommand::Void { event_id, note } => (event_id, Resolution::Void, note),
    };
    match app
        .ledger
        .resolve_dead_letter(event_id, resolution, &note)
        .await?
    {
        Some(outcome) => {
            println!("{event_id}: {outcome}");
            Ok(())
        }
        None => bail!("{event_id}: no open dead letter"),
    }
}
