use dropgate::config::{self, Command};
use dropgate::startup::{Application, shutdown_signal};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = config::parse();
    let result = match cli.command {
        Command::Serve(config) => {
            dropgate::telemetry::init_logs(config.log_json);
            serve(*config).await
        }
        Command::Dev(config) => {
            dropgate::telemetry::init_logs(false);
            dropgate::dev::run(config).await
        }
        Command::Migrate(stores) => {
            dropgate::telemetry::init_logs(false);
            dropgate::startup::migrate(&stores).await
        }
        Command::Worker(stores) => {
            dropgate::telemetry::init_logs(false);
            dropgate::startup::run_worker(stores, shutdown_signal()).await
        }
        Command::Reconcile(stores) => {
            dropgate::telemetry::init_logs(false);
            dropgate::startup::run_reconciler(stores, shutdown_signal()).await
        }
        Command::Skus(config) => {
            dropgate::telemetry::init_logs_with("warn", false);
            dropgate::operator::skus(config).await
        }
        Command::Holds(config) => {
            dropgate::telemetry::init_logs_with("warn", false);
            dropgate::operator::holds(config).await
        }
        Command::DeadLetters(config) => {
            dropgate::telemetry::init_logs_with("warn", false);
            dropgate::operator::dead_letters(config).await
        }
        Command::Audit(config) => {
            dropgate::telemetry::init_logs_with("warn", false);
            return audit(config).await;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dropgate: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: dropgate::config::ServeConfig) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    tracing::info!(addr = %app.local_addr()?, "dropgate serving");
    app.run_until_stopped(shutdown_signal()).await
}

async fn audit(config: dropgate::config::AuditConfig) -> ExitCode {
    let report = match dropgate::startup::connect(&config.stores).await {
        Ok(app) => dropgate::audit::audit(&app)
            .await
            .map_err(anyhow::Error::from),
        Err(error) => Err(error),
    };
    match report {
        Ok(report) => {
            if config.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print!("{}", report.table());
            }
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => {
            eprintln!("dropgate: {error:#}");
            ExitCode::from(2)
        }
    }
}
