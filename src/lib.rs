//! # dropgate
//!
//! A flash-sale gatekeeper. Storefronts ask to hold units of a SKU; dropgate
//! answers in about a millisecond and never sells a unit twice.
//!
//! * [`domain`]: SKU ids, customers, quantities, holds, events, outcomes,
//!   stock figures; pure values and rules, parsed once at the edge. No I/O,
//!   no clock, no randomness: those are passed in.
//! * [`gate`]: Redis, the admission authority. One module and one Lua script
//!   per operation, each with a typed request and reply; the script decides
//!   atomically and appends the event to the SKU's stream.
//! * [`ledger`]: Postgres, the durable record. Constraints make oversell
//!   impossible; movements are append-only; dead letters hold the events it
//!   refuses. The gate and the ledger never import each other.
//! * [`app`]: the service layer: admission, holds, stock changes, inline
//!   ledger writes, across gate and ledger. Everything below calls it.
//! * [`http`]: the API of shared/API.md, its request and response types,
//!   problem+json errors, the edge server, the dashboard.
//! * [`worker`]: streams events from the gate into the ledger in batches.
//! * [`reaper`]: expires abandoned holds and returns their units.
//! * [`reconciler`]: compares gate and ledger at a fence, repairs the gate.
//! * [`sweep`]: the slow round over every SKU that makes up for lost
//!   activity hints; the services otherwise touch only SKUs that moved.
//! * [`rebuild`]: builds the gate from the ledger (empty Redis, or a gate
//!   built from another ledger).
//! * [`periodic`]: the loop the reaper and reconciler run in.
//! * [`audit`]: `dropgate audit`, every invariant across both stores.
//! * [`operator`]: `dropgate skus|holds|dead-letters`.
//! * [`config`], [`telemetry`], [`startup`], [`limits`], [`dev`]: plumbing
//!   (`dev` also starts the local processes tests use).

pub mod app;
pub mod audit;
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
