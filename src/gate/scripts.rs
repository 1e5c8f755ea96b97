//! The Lua scripts of `lua/`, embedded in the binary. `redis::Script` runs
//! them with EVALSHA and loads them on NOSCRIPT, so a Redis restart or a
//! SCRIPT FLUSH costs one extra round trip, not an error.

use redis::Script;
use std::sync::LazyLock;

const HOLD_LIB: &str = include_str!("../../lua/hold_lib.lua");

pub struct Scripts {
    pub admit: Script,
    pub confirm: Script,
    pub release: Script,
    pub extend: Script,
    pub expire: Script,
    pub set_sku: Script,
    pub trim: Script,
    pub snapshot: Script,
    pub repair: Script,
    pub lose: Script,
}

fn with_hold_lib(body: &str) -> Script {
    Script::new(&format!("{HOLD_LIB}\n{body}"))
}

pub static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    admit: Script::new(include_str!("../../lua/admit.lua")),
    confirm: with_hold_lib(include_str!("../../lua/confirm.lua")),
    release: with_hold_lib(include_str!("../../lua/release.lua")),
    extend: with_hold_lib(include_str!("../../lua/extend.lua")),
    expire: with_hold_lib(include_str!("../../lua/expire.lua")),
    set_sku: Script::new(include_str!("../../lua/set_sku.lua")),
    trim: Script::new(include_str!("../../lua/trim.lua")),
    snapshot: Script::new(include_str!("../../lua/snapshot.lua")),
    repair: Script::new(include_str!("../../lua/repair.lua")),
    lose: Script::new(include_str!("../../lua/lose.lua")),
});
