//! TEMPORARY STUB (lead): helper-1 replaces this whole file.
pub struct Services {
    pub redis_url: String,
    pub database_url: String,
    pub notes: Vec<String>,
}
impl Services {
    pub fn started_any(&self) -> bool {
        false
    }
}
pub async fn ensure_services(database_name: &str) -> anyhow::Result<Services> {
    Ok(Services {
        redis_url: crate::config::DEFAULT_REDIS_URL.into(),
        database_url: format!("postgres://postgres@127.0.0.1:5432/{database_name}"),
        notes: vec![],
    })
}
