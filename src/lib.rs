//! # dropgate
//!
//! A flash-sale gatekeeper. Storefronts ask to hold units of a SKU; dropgate
//! answers in about a millisecond and never sells a unit twice.
//!
//! * [`gate`]: Redis, the admission authority. One Lua script per operation
//!   decides atomically and appends an event to the SKU's stream.
//! * [`ledger`]: Postgres, the durable record. Constraints make oversell
//!   impossible; movements are append-only.
//! * [`worker`]: streams events from the gate into the ledger in batches.
//! * [`reaper`]: expires abandoned holds and returns their units.
//! * [`reconciler`]: compares gate and ledger at a fence, repairs drift.
//! * [`sweep`]: the slow round over every SKU that makes up for lost
//!   activity hints; the services otherwise touch only SKUs that moved.
//! * [`rebuild`]: builds the gate from the ledger when Redis is empty.
//! * [`app`]: the operations, across gate and ledger.
//! * [`http`]: the API of shared/API.md, problem+json errors.
//! * [`domain`]: SKU ids, customers, holds, events; parsed once at the edge.
//! * [`config`], [`telemetry`], [`startup`], [`limits`], [`dev`]: plumbing.

pub mod app;
pub mod audit;
pub mod clock;
pub mod config;
pub mod dev;
pub mod domain;
pub mod gate;
pub mod http;
pub mod ledger;
pub mod limits;
pub mod operator;
pub mod periodic;
pub mod reaper;
pub mod rebuild;
pub mod reconciler;
pub mod startup;
pub mod sweep;
pub mod telemetry;
pub mod worker;
