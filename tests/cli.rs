//! The binary as operators meet it: configuration errors and `audit`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{PG_BASE, TestApp, spawn_app_with, test_config};
use serde_json::{Value, json};
use std::process::{Command, Output};

fn dropgate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dropgate"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("dropgate runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_bad_value_stops_start_up_with_one_line_naming_it() {
    let cases = [
        (
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:99999/x",
            "DATABASE_URL: invalid port\n",
        ),
        (
            "DATABASE_URL",
            "mysql://h/x",
            "DATABASE_URL: scheme must be postgres://\n",
        ),
        (
            "REDIS_URL",
            "http://127.0.0.1",
            "REDIS_URL: scheme must be redis://\n",
        ),
        (
            "DROPGATE_LISTEN",
            "nowhere",
            "DROPGATE_LISTEN: invalid socket address syntax\n",
        ),
        (
            "DROPGATE_KEY_PREFIX",
            "a:b",
            "DROPGATE_KEY_PREFIX: must be 1..64 characters of [A-Za-z0-9._-]\n",
        ),
        (
            "DROPGATE_ADMIN_TOKEN",
            "short",
            "DROPGATE_ADMIN_TOKEN: tokens must be 8..256 visible ASCII characters\n",
        ),
    ];
    for (name, value, expected) in cases {
        let output = dropgate(&["serve"], &[(name, value)]);
        assert_eq!(output.status.code(), Some(2), "{name}");
        assert_eq!(stderr(&output), expected, "{name}");
    }
    let output = dropgate(&["serve"], &[("DROPGATE_REDIS_DOWN", "fallback")]);
    assert_eq!(output.status.code(), Some(2));
    let line = stderr(&output);
    assert!(
        line.starts_with("DROPGATE_REDIS_DOWN: fallback was removed") && line.lines().count() == 1,
        "{line}"
    );
    let output = dropgate(&["serve"], &[("DROPGATE_CUSTOMER_RPS", "ten")]);
    assert_eq!(output.status.code(), Some(2));
    let line = stderr(&output);
    assert!(
        line.starts_with("DROPGATE_CUSTOMER_RPS: ") && line.lines().count() == 1,
        "{line}"
    );
}

fn audit(app: &TestApp, json_output: bool) -> Output {
    let database_url = format!("{PG_BASE}/{}", app.database);
    let mut args = vec!["audit"];
    if json_output {
        args.push("--json");
    }
    dropgate(
        &args,
        &[
            ("DATABASE_URL", &database_url),
            ("REDIS_URL", &app.redis_url),
            ("DROPGATE_KEY_PREFIX", &app.prefix),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_passes_on_a_healthy_drop_and_fails_on_a_breach() {
    let mut config = test_config();
    config.no_reconciler = true;
    let app = spawn_app_with(config).await;
    app.create_sku("drop", json!({"on_hand": 10})).await;
    for i in 0..3 {
        assert_eq!(
            app.admit("drop", &format!("k{i}"), &format!("c{i}"), 1)
                .await
                .status(),
            201
        );
    }

    let output = audit(&app, false);
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(0), "{table}{}", stderr(&output));
    assert!(
        table.contains("drop") && table.ends_with("audit passed\n"),
        "{table}"
    );

    let output = audit(&app, true);
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["skus"][0]["held"], 3);
    assert_eq!(report["skus"][0]["live_holds_gate"], 3);
    assert_eq!(report["skus"][0]["live_holds_ledger"], 3);

    // Behind dropgate's back: the gate now disagrees with the ledger.
    app.tamper_stock("drop", "HINCRBY", "sold", 2).await;
    let output = audit(&app, true);
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report["skus"][0]["breaches"][0],
        "gate has on_hand 10 held 3 sold 2"
    );
    app.stop().await;
}

fn store_env(app: &TestApp) -> [(&'static str, String); 3] {
    [
        ("DATABASE_URL", format!("{PG_BASE}/{}", app.database)),
        ("REDIS_URL", app.redis_url.clone()),
        ("DROPGATE_KEY_PREFIX", app.prefix.clone()),
    ]
}

fn run(app: &TestApp, args: &[&str]) -> Output {
    let env = store_env(app);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    dropgate(args, &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_manage_skus_and_read_holds_from_the_command_line() {
    let app = spawn_app_with(test_config()).await;
    let put = run(
        &app,
        &[
            "skus",
            "put",
            "drop-9",
            "--on-hand",
            "7",
            "--per-customer-limit",
            "1",
        ],
    );
    assert!(put.status.success(), "{}", stderr(&put));
    let sku: Value = serde_json::from_slice(&put.stdout).unwrap();
    assert_eq!(
        (sku["on_hand"].as_i64(), sku["per_customer_limit"].as_i64()),
        (Some(7), Some(1))
    );
    assert_eq!(
        app.sku("drop-9").await["available"],
        7,
        "the server sees what the CLI did"
    );

    let hold = common::body(app.admit("drop-9", "k", "c", 1).await).await;
    let id = hold["hold_id"].as_str().unwrap();
    let shown = run(&app, &["holds", "show", id]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(
        (shown["hold_id"].as_str(), shown["state"].as_str()),
        (Some(id), Some("held"))
    );

    let list = run(&app, &["skus", "list"]);
    let lines: Vec<Value> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(
        (lines[0]["sku"].as_str(), lines[0]["held"].as_i64()),
        (Some("drop-9"), Some(1))
    );

    let refused = run(&app, &["skus", "put", "drop-9", "--on-hand", "0"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("below held 1"),
        "{}",
        stderr(&refused)
    );
    for help in [
        &["skus", "--help"][..],
        &["skus", "put", "--help"],
        &["holds", "show", "--help"],
    ] {
        let output = dropgate(help, &[]);
        assert!(output.status.success() && !output.stdout.is_empty());
    }
    app.stop().await;
}
