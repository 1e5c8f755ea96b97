//! The nemesis: runs dropgate as deployed (two gatekeepers, a worker, a
//! reconciler, a private Redis, Postgres behind a proxy) under a seeded
//! workload while injecting faults at random moments, records every
//! operation, heals, lets everything settle, and checks the whole history.
//!
//! ```text
//! cargo test --test nemesis                              # CI: 3 seeds x 20 s
//! cargo test --test nemesis -- --runs 40 --seconds 60    # a campaign
//! cargo test --test nemesis -- --seed 1234 --runs 1      # replay one seed
//! cargo test --test nemesis -- --recheck loadtest/out/nemesis/1234
//! ```
//!
//! Flags: `--seed N` (random when absent, always printed; run i uses
//! N + i), `--runs N`, `--seconds S`, `--bin PATH` (default: the dropgate
//! cargo built for the tests), `--out DIR` (default loadtest/out/nemesis).
//! Each run writes `history.jsonl`, `final.json`, `run.json`, `report.txt`,
//! `report.json` and the processes' logs under `<out>/<seed>/`.
//! Exits non-zero when any run finds a violation.

mod checker;
mod faults;
mod history;
mod linear;
mod proxy;
mod topology;
mod workload;

use anyhow::Context;
use checker::{FinalState, LedgerHold, Movement, Report, RunRecord, SkuSpec};
use history::{History, Recorder, Sample, wall_ms};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, watch};
use topology::{Settings, Topology};
use workload::Shared;

/// Storefront clients on the main SKUs, and the customers they buy for.
const CLIENTS: usize = 10;
const CUSTOMERS: usize = 6;
/// How long the system may take to settle after the faults stop.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Violations of each check printed per run (all are in report.txt).
const PRINTED_PER_CHECK: usize = 3;

struct Args {
    seed: Option<u64>,
    runs: u64,
    seconds: u64,
    bin: PathBuf,
    out: PathBuf,
    recheck: Option<PathBuf>,
    /// Skew gatekeeper 2's clock by ±5 s (on unless `--no-skew`): every
    /// decision by time reads Redis's clock (DESIGN "One clock"), so a
    /// skewed gatekeeper must decide exactly as the others.
    skew: bool,
}

enum Parsed {
    Run(Args),
    /// `--list`, or a test-name filter that does not match: nothing to run.
    Nothing,
}

fn parse_args() -> anyhow::Result<Parsed> {
    let mut args = Args {
        seed: None,
        runs: 3,
        seconds: 20,
        bin: PathBuf::from(env!("CARGO_BIN_EXE_dropgate")),
        out: Path::new(env!("CARGO_MANIFEST_DIR")).join("loadtest/out/nemesis"),
        recheck: None,
        skew: true,
    };
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        let mut value = |name: &str| {
            given
                .next()
                .with_context(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--seed" => args.seed = Some(value("--seed")?.parse().context("--seed")?),
            "--runs" => args.runs = value("--runs")?.parse().context("--runs")?,
            "--seconds" => args.seconds = value("--seconds")?.parse().context("--seconds")?,
            "--bin" => args.bin = PathBuf::from(value("--bin")?),
            "--out" => args.out = PathBuf::from(value("--out")?),
            "--recheck" => args.recheck = Some(PathBuf::from(value("--recheck")?)),
            "--no-skew" => args.skew = false,
            "--list" => {
                println!("nemesis: test");
                return Ok(Parsed::Nothing);
            }
            // What cargo test may pass to every test binary.
            "--nocapture" | "--quiet" | "-q" | "--ignored" | "--include-ignored" | "--exact"
            | "--show-output" => {}
            flag if flag.starts_with("--test-threads") || flag.starts_with("--format") => {}
            flag if flag.starts_with('-') => anyhow::bail!("unknown flag {flag}"),
            filter if !"nemesis".contains(filter) => return Ok(Parsed::Nothing),
            _ => {}
        }
    }
    Ok(Parsed::Run(args))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Parsed::Run(args)) => args,
        Ok(Parsed::Nothing) => return ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("nemesis: {error:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("nemesis: {error}");
            return ExitCode::from(2);
        }
    };
    if let Some(dir) = &args.recheck {
        return match recheck(dir) {
            Ok(report) if report.violations.is_empty() => ExitCode::SUCCESS,
            Ok(_) => ExitCode::FAILURE,
            Err(error) => {
                eprintln!("nemesis: {error:#}");
                ExitCode::from(2)
            }
        };
    }
    runtime.block_on(campaign(args))
}

async fn campaign(args: Args) -> ExitCode {
    // Random seeds stay short enough to type back in.
    let base = args
        .seed
        .unwrap_or_else(|| u64::from(rand::random::<u32>()));
    println!(
        "nemesis: {} run(s) of {} s from seed {base} (replay one: --seed <seed> --runs 1)",
        args.runs, args.seconds
    );
    let started = Instant::now();
    let mut failed: Vec<(u64, String)> = Vec::new();
    for i in 0..args.runs {
        let seed = base.wrapping_add(i);
        match run_one(&args, seed).await {
            Ok(report) if report.violations.is_empty() => {}
            Ok(report) => {
                let checks: Vec<String> = report
                    .by_check()
                    .into_iter()
                    .map(|(check, n)| format!("{check} {n}"))
                    .collect();
                failed.push((seed, checks.join(", ")));
            }
            Err(error) => {
                println!("seed {seed}: the run broke: {error:#}");
                failed.push((seed, format!("run error: {error:#}")));
            }
        }
    }
    println!(
        "\nnemesis: {} run(s) in {:.0} s, {} with violations",
        args.runs,
        started.elapsed().as_secs_f64(),
        failed.len()
    );
    for (seed, what) in &failed {
        println!("  seed {seed}: {what}");
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What `run.json` keeps, so a run can be checked again from its files.
#[derive(Serialize, Deserialize)]
struct RunMeta {
    seed: u64,
    seconds: u64,
    started_wall_ms: i64,
    skus: Vec<SkuSpec>,
}

async fn run_one(args: &Args, seed: u64) -> anyhow::Result<Report> {
    let dir = args.out.join(seed.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let faketime = topology::faketime_library();
    let main = workload::main_skus(&mut rng);
    println!(
        "\nseed {seed}: {} s, {}",
        args.seconds,
        main.iter()
            .map(|s| format!(
                "{} ({} units, limit {}, ttl {} ms)",
                s.sku, s.on_hand, s.per_customer_limit, s.hold_ttl_ms
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !args.skew {
        println!("  clock skew off (--no-skew)");
    } else if faketime.is_none() {
        println!("  clock skew skipped: libfaketime is not installed (apt-get install faketime)");
    }

    let topology = Topology::start(Settings {
        bin: args.bin.clone(),
        dir: dir.clone(),
        seed,
        faketime: faketime.clone(),
    })
    .await?;
    let nodes: Vec<(String, std::net::SocketAddr)> = topology
        .services
        .iter()
        .filter_map(|s| Some((s.name.clone(), s.addr?)))
        .collect();
    let database_url = topology.direct_database_url();
    let topology = Arc::new(Mutex::new(topology));
    let outcome = drive(
        args,
        seed,
        &mut rng,
        &topology,
        nodes,
        &database_url,
        main,
        args.skew && faketime.is_some(),
    )
    .await;
    match Arc::try_unwrap(topology) {
        Ok(topology) => topology.into_inner().teardown().await,
        Err(_) => {
            eprintln!("nemesis: the topology is still in use; its processes die with the run")
        }
    }
    let (recorder, specs, fin) = outcome?;

    let lines = recorder.lines();
    history::write_lines(&dir.join("history.jsonl"), &lines)?;
    let meta = RunMeta {
        seed,
        seconds: args.seconds,
        started_wall_ms: recorder_started_wall_ms(&recorder),
        skus: specs,
    };
    std::fs::write(dir.join("run.json"), serde_json::to_string_pretty(&meta)?)?;
    std::fs::write(dir.join("final.json"), serde_json::to_string_pretty(&fin)?)?;
    let run = RunRecord {
        started_wall_ms: meta.started_wall_ms,
        skus: meta.skus,
        history: History::from_lines(&lines),
        fin,
    };
    let report = checker::check(&run);
    write_report(&dir, &report)?;
    summarize(seed, &run, &report, &dir);
    Ok(report)
}

/// The wall-clock time of the recorder's monotonic 0.
fn recorder_started_wall_ms(recorder: &Recorder) -> i64 {
    wall_ms() - i64::try_from(recorder.now_ns() / 1_000_000).unwrap_or(0)
}

type Driven = (Arc<Recorder>, Vec<SkuSpec>, FinalState);

/// Workload and faults for `args.seconds`, then heal, settle and collect
/// the state at rest.
#[allow(clippy::too_many_arguments)]
async fn drive(
    args: &Args,
    seed: u64,
    rng: &mut StdRng,
    topology: &Arc<Mutex<Topology>>,
    nodes: Vec<(String, std::net::SocketAddr)>,
    database_url: &str,
    main: Vec<SkuSpec>,
    skew: bool,
) -> anyhow::Result<Driven> {
    let recorder = Arc::new(Recorder::new());
    let shared = Arc::new(Shared::new(
        recorder.clone(),
        nodes,
        main.clone(),
        CUSTOMERS,
    ));
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(5))
        .connect(database_url)
        .await
        .context("the run's database")?;
    for spec in &main {
        let created = shared.put_sku("admin", spec, spec.on_hand, rng).await;
        anyhow::ensure!(
            created.kind == history::Kind::Ok,
            "could not create {}: {created:?}",
            spec.sku
        );
    }

    let (stop, stopped) = watch::channel(false);
    let mut workload = Vec::new();
    for id in 0..CLIENTS {
        let rng = StdRng::seed_from_u64(rng.random());
        workload.push(tokio::spawn(workload::storefront(
            shared.clone(),
            id,
            rng,
            stopped.clone(),
        )));
    }
    let admin_rng = StdRng::seed_from_u64(rng.random());
    workload.push(tokio::spawn(workload::admin(
        shared.clone(),
        admin_rng,
        stopped.clone(),
    )));
    let probe_rng = StdRng::seed_from_u64(rng.random());
    workload.push(tokio::spawn(workload::probes(
        shared.clone(),
        probe_rng,
        stopped.clone(),
    )));
    let sampler_rng = StdRng::seed_from_u64(rng.random());
    workload.push(tokio::spawn(workload::sampler(
        shared.clone(),
        pool.clone(),
        sampler_rng,
        stopped.clone(),
    )));
    let supervisor = tokio::spawn(faults::supervise(
        topology.clone(),
        recorder.clone(),
        stopped.clone(),
    ));

    let until_ns = recorder.now_ns() + args.seconds * 1_000_000_000;
    let nemesis_rng = StdRng::seed_from_u64(rng.random());
    let injected = faults::run(
        topology.clone(),
        recorder.clone(),
        nemesis_rng,
        until_ns,
        skew,
    )
    .await;
    let left = until_ns.saturating_sub(recorder.now_ns());
    tokio::time::sleep(Duration::from_nanos(left)).await;

    let restarted = topology.lock().await.heal().await;
    if !restarted.is_empty() {
        println!("  healed: restarted {}", restarted.join(", "));
    }
    let _ = stop.send(true);
    for task in workload {
        if tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .is_err()
        {
            println!("  a workload task did not stop within 60 s");
        }
    }
    let _ = supervisor.await;
    println!(
        "  seed {seed}: {} faults injected; settling",
        injected.len()
    );

    let fin = settle(&shared, topology, &pool, rng).await;
    let specs = shared.specs.lock().map(|s| s.clone()).unwrap_or_default();
    pool.close().await;
    Ok((recorder, specs, fin))
}

/// Waits until nothing is held in the ledger and every gatekeeper agrees
/// with the ledger on every SKU (then once more after a reconciler pass),
/// releasing probe holds nobody knew of; then collects the state at rest.
async fn settle(
    shared: &Shared,
    topology: &Arc<Mutex<Topology>>,
    pool: &sqlx::PgPool,
    rng: &mut StdRng,
) -> FinalState {
    let started = Instant::now();
    let mut fin = FinalState::default();
    loop {
        workload::sweep(shared, pool, rng).await;
        match at_rest(shared, pool).await {
            Ok(()) => {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                if at_rest(shared, pool).await.is_ok() {
                    fin.settled = true;
                    fin.settle_note =
                        format!("settled in {:.1} s", started.elapsed().as_secs_f64());
                    break;
                }
            }
            Err(why) => fin.settle_note = why,
        }
        if started.elapsed() > SETTLE_TIMEOUT {
            fin.settle_note = format!(
                "not settled after {} s: {}",
                SETTLE_TIMEOUT.as_secs(),
                fin.settle_note
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("  {}", fin.settle_note);
    collect(shared, topology, pool, &mut fin).await;
    fin
}

async fn at_rest(shared: &Shared, pool: &sqlx::PgPool) -> Result<(), String> {
    let (ledger, _) = workload::ledger_sample(pool)
        .await
        .map_err(|e| format!("ledger: {e}"))?;
    if let Some(f) = ledger.iter().find(|f| f.held != 0) {
        return Err(format!("{} still has {} held in the ledger", f.sku, f.held));
    }
    for node in 0..shared.node_names().len() {
        for f in &ledger {
            let gate = shared.gate_figures(node, &f.sku).await?;
            if (gate.on_hand, gate.held, gate.sold) != (f.on_hand, f.held, f.sold) {
                return Err(format!(
                    "{}: gate {} {}/{}/{} vs ledger {}/{}/{}",
                    shared.node_names()[node],
                    f.sku,
                    gate.on_hand,
                    gate.held,
                    gate.sold,
                    f.on_hand,
                    f.held,
                    f.sold
                ));
            }
        }
    }
    Ok(())
}

async fn collect(
    shared: &Shared,
    topology: &Arc<Mutex<Topology>>,
    pool: &sqlx::PgPool,
    fin: &mut FinalState,
) {
    fin.wall_ms = wall_ms();
    match workload::ledger_sample(pool).await {
        Ok((skus, _)) => fin.ledger = skus,
        Err(error) => fin
            .gate_errors
            .push(format!("ledger unreadable at rest: {error}")),
    }
    let holds: Result<Vec<HoldRow>, _> = sqlx::query_as(
        "SELECT hold_id::text, sku, customer_id, quantity, state, idempotency_key,
                (extract(epoch FROM expires_at) * 1000)::int8 AS expires_at_ms
         FROM holds ORDER BY created_at",
    )
    .fetch_all(pool)
    .await;
    match holds {
        Ok(rows) => fin.holds = rows.into_iter().map(LedgerHold::from).collect(),
        Err(error) => fin
            .gate_errors
            .push(format!("ledger holds unreadable: {error}")),
    }
    let movements: Result<Vec<MovementRow>, _> = sqlx::query_as(
        "SELECT sku, kind, hold_id::text, quantity_delta, reason,
                (extract(epoch FROM committed_at) * 1000)::int8 AS committed_wall_ms
         FROM movements WHERE kind NOT IN ('admit', 'extend') ORDER BY committed_at",
    )
    .fetch_all(pool)
    .await;
    match movements {
        Ok(rows) => fin.movements = rows.into_iter().map(Movement::from).collect(),
        Err(error) => fin
            .gate_errors
            .push(format!("ledger movements unreadable: {error}")),
    }
    // Events the ledger set aside as unappliable (newer schemas only).
    let dead: Result<Vec<(String, String)>, _> =
        sqlx::query_as("SELECT sku, error FROM dead_letters WHERE state = 'open'")
            .fetch_all(pool)
            .await;
    fin.dead_letters = dead
        .unwrap_or_default()
        .into_iter()
        .map(|(sku, error)| format!("{sku}: {error}"))
        .collect();
    for (node, name) in shared.node_names().iter().enumerate() {
        let mut skus = Vec::new();
        for f in &fin.ledger {
            match shared.gate_figures(node, &f.sku).await {
                Ok(figures) => skus.push(figures),
                Err(error) => fin.gate_errors.push(format!("{name} {}: {error}", f.sku)),
            }
        }
        fin.gate.push(Sample {
            time_ns: u64::MAX,
            source: name.clone(),
            skus,
            customers: Vec::new(),
        });
    }
    let (exit, output) = topology.lock().await.audit().await;
    fin.audit_exit = exit;
    fin.audit_output = output;
}

#[derive(sqlx::FromRow)]
struct HoldRow {
    hold_id: String,
    sku: String,
    customer_id: String,
    quantity: i32,
    state: String,
    idempotency_key: Option<String>,
    expires_at_ms: i64,
}

impl From<HoldRow> for LedgerHold {
    fn from(row: HoldRow) -> Self {
        Self {
            hold_id: row.hold_id,
            sku: row.sku,
            customer_id: row.customer_id,
            quantity: i64::from(row.quantity),
            state: row.state,
            idempotency_key: row.idempotency_key,
            expires_at_ms: row.expires_at_ms,
        }
    }
}

#[derive(sqlx::FromRow)]
struct MovementRow {
    sku: String,
    kind: String,
    hold_id: Option<String>,
    quantity_delta: i64,
    reason: Option<String>,
    committed_wall_ms: i64,
}

impl From<MovementRow> for Movement {
    fn from(row: MovementRow) -> Self {
        Self {
            sku: row.sku,
            kind: row.kind,
            hold_id: row.hold_id,
            quantity_delta: row.quantity_delta,
            reason: row.reason,
            committed_wall_ms: row.committed_wall_ms,
        }
    }
}

fn write_report(dir: &Path, report: &Report) -> anyhow::Result<()> {
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    std::fs::write(dir.join("report.txt"), report.text(usize::MAX))?;
    Ok(())
}

fn summarize(seed: u64, run: &RunRecord, report: &Report, dir: &Path) {
    let stat = |name: &str| report.stats.get(name).copied().unwrap_or(0);
    let mut faults: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for fault in &run.history.faults {
        *faults.entry(fault.name.as_str()).or_default() += 1;
    }
    println!(
        "  seed {seed}: {} ops ({} ok, {} fail, {} info), {} holds admitted, {} sold_out, {} confirmed; faults: {}",
        stat("ops"),
        stat("ops_ok"),
        stat("ops_fail"),
        stat("ops_info"),
        stat("holds_admitted"),
        stat("sold_out_answers"),
        stat("confirms_ok"),
        faults
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  seed {seed}: windows {} linearizable, {} skipped (data loss), {} undecided; sold_out checked {}",
        stat("windows_linearizable"),
        stat("windows_skipped_data_loss"),
        stat("windows_undecided"),
        stat("sold_out_checked"),
    );
    if report.violations.is_empty() {
        println!("  seed {seed}: no violations ({})", dir.display());
    } else {
        println!(
            "  seed {seed}: {} VIOLATIONS ({}/report.txt)",
            report.violations.len(),
            dir.display()
        );
        for line in report.text(PRINTED_PER_CHECK).lines() {
            println!("    {line}");
        }
    }
}

/// Checks a run again from its files.
fn recheck(dir: &Path) -> anyhow::Result<Report> {
    let meta: RunMeta = serde_json::from_str(&std::fs::read_to_string(dir.join("run.json"))?)?;
    let fin: FinalState = serde_json::from_str(&std::fs::read_to_string(dir.join("final.json"))?)?;
    let lines = history::read_lines(&dir.join("history.jsonl"))?;
    let run = RunRecord {
        started_wall_ms: meta.started_wall_ms,
        skus: meta.skus,
        history: History::from_lines(&lines),
        fin,
    };
    let report = checker::check(&run);
    print!("{}", report.text(PRINTED_PER_CHECK));
    Ok(report)
}
