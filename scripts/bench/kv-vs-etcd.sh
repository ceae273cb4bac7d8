#!/usr/bin/env bash
# Flotilla side by side with etcd on this machine: the same client (flotilla-bench), the same
# workloads, 3 members each on 127.0.0.1, fsync on for both, alternating rounds (A/B, then B/A)
# to cancel machine noise. Prints the disk's physical limits, then one table with medians per
# system and the ratio Flotilla/etcd. Both clusters are torn down by PID at the end.
#
#   scripts/bench/kv-vs-etcd.sh                       # 3 rounds x 6 workloads x 10 s
#   ROUNDS=1 DURATION=2s scripts/bench/kv-vs-etcd.sh  # a quick look
#   WORKLOADS="put get" scripts/bench/kv-vs-etcd.sh
#
# Installs Debian's etcd-server when etcd is missing. Results (JSON lines) are kept in
# $OUT (default target/bench/kv-vs-etcd-<timestamp>.jsonl).
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
WORKLOADS="${WORKLOADS:-put seq-put get get-serializable mixed watch}"
CLIENTS="${CLIENTS:-64}"
CONNS="${CONNS:-8}"
mkdir -p target/bench
OUT="${OUT:-target/bench/kv-vs-etcd-$(date +%Y%m%d-%H%M%S).jsonl}"

if ! command -v etcd >/dev/null 2>&1; then
  echo "== installing etcd-server"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq etcd-server >/dev/null
fi

echo "== building (release)"
cargo build --release -q -p flotilla -p flotilla-bench
BENCH=target/release/flotilla-bench
FLOTILLA=target/release/flotilla

WORK="$(mktemp -d /var/tmp/flotilla-kv-vs-etcd.XXXXXX)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- etcd: 3 members -------------------------------------------------------------------------
ETCD_CLUSTER="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
ETCD_ENDPOINTS="127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793"
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$WORK/etcd/e$i" \
    --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
    --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
    --initial-cluster "$ETCD_CLUSTER" --initial-cluster-state new --initial-cluster-token bench \
    >"$WORK/etcd-e$i.log" 2>&1 &
  PIDS+=($!)
done

# --- Flotilla: 3 nodes -----------------------------------------------------------------------
FL_CLUSTER=""
for i in 1 2 3; do
  FL_CLUSTER+="${FL_CLUSTER:+,}$i=http://127.0.0.1:2710$i|http://127.0.0.1:2737$i"
done
FL_ENDPOINTS="127.0.0.1:27371,127.0.0.1:27372,127.0.0.1:27373"
for i in 1 2 3; do
  "$FLOTILLA" server --node-id "$i" --data-dir "$WORK/flotilla/$i" \
    --peer-listen "127.0.0.1:2710$i" --client-listen "127.0.0.1:2737$i" \
    --admin-listen "127.0.0.1:2718$i" --initial-cluster "$FL_CLUSTER" --log-level warn \
    >"$WORK/flotilla-$i.log" 2>&1 &
  PIDS+=($!)
done

wait_ready() { # name endpoints
  local deadline=$((SECONDS + 60))
  until "$BENCH" kv --endpoints "$2" --workload seq-put --requests 1 --duration 5s --no-progress \
      --output json 2>/dev/null | grep -q '"errors":0'; do
    if [ $SECONDS -ge $deadline ]; then
      echo "$1 did not become ready; logs in $WORK" >&2
      tail -n 20 "$WORK"/*.log >&2
      exit 1
    fi
    sleep 0.5
  done
}
wait_ready etcd "$ETCD_ENDPOINTS"
wait_ready flotilla "$FL_ENDPOINTS"

echo "== disk ($WORK)"
"$BENCH" disk --dir "$WORK"

run() { # system endpoints workload
  "$BENCH" kv --endpoints "$2" --workload "$3" --clients "$CLIENTS" --conns "$CONNS" \
    --duration "$DURATION" --label "$1" --output json --no-progress >>"$OUT"
}

: >"$OUT"
for round in $(seq 1 "$ROUNDS"); do
  for w in $WORKLOADS; do
    if [ $((round % 2)) -eq 1 ]; then order="etcd flotilla"; else order="flotilla etcd"; fi
    for sys in $order; do
      if [ "$sys" = etcd ]; then eps="$ETCD_ENDPOINTS"; else eps="$FL_ENDPOINTS"; fi
      echo "== round $round/$ROUNDS: $w on $sys"
      run "$sys" "$eps" "$w"
    done
  done
done

echo "== results ($OUT; medians of $ROUNDS rounds, $DURATION each, $CLIENTS clients / $CONNS conns)"
python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault((r["workload"], r["label"]), []).append(r)
med = lambda rs, k: statistics.median(x[k] for x in rs)
order = []
for r in rows:
    if r["workload"] not in order:
        order.append(r["workload"])
print(f'{"workload":<17} {"etcd ops/s":>11} {"flotilla ops/s":>15} {"ratio":>6} {"etcd p50":>9} {"fl p50":>8} {"etcd p99":>9} {"fl p99":>8} {"errors e/f":>11}')
for w in order:
    e, f = by.get((w, "etcd"), []), by.get((w, "flotilla"), [])
    if not e or not f:
        continue
    eo, fo = med(e, "ops_per_sec"), med(f, "ops_per_sec")
    print(f'{w:<17} {eo:>11.0f} {fo:>15.0f} {fo / max(eo, 1e-9):>6.2f} {med(e, "p50_ms"):>9.2f} {med(f, "p50_ms"):>8.2f} {med(e, "p99_ms"):>9.2f} {med(f, "p99_ms"):>8.2f} {sum(x["errors"] for x in e):>5}/{sum(x["errors"] for x in f):<5}')
PY
