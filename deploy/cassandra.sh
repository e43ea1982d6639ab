#!/usr/bin/env bash
# Install, start and stop a real Apache Cassandra node for kiln (tests, `kiln dev
# --storage cassandra`, CI and developers all use this script).
#
# Why our own launcher: Cassandra 5.0's binary tarball is not on Maven Central
# (only cassandra-all and its dependencies are; see shared/CASSANDRA.md), and no
# Debian package exists. The release tarball's lib/ is exactly cassandra-all's
# runtime dependency set, so we let Maven copy that set into a cache and start
# org.apache.cassandra.service.CassandraDaemon on JDK 17 ourselves, with the JVM
# flags the tarball's jvm17-server.options and cassandra-env.sh would add.
#
#   deploy/cassandra.sh install
#   deploy/cassandra.sh start  [--data-dir DIR] [--cql-port N] [--storage-port N] [--heap SIZE] [--timeout S]
#   deploy/cassandra.sh stop   [--data-dir DIR]
#   deploy/cassandra.sh kill   [--data-dir DIR]   (SIGKILL at once: for a node whose data is thrown away)
#   deploy/cassandra.sh status [--data-dir DIR]
#
# start prints HOST:PORT of the CQL endpoint once a real CQL query succeeds.
# KILN_CASSANDRA_FAST=1 skips fsync (tests only: a crash may lose recent writes).
set -euo pipefail

VERSION="${KILN_CASSANDRA_VERSION:-5.0.8}"
HERE="$(cd "$(dirname "$0")" && pwd)"
HOME_DIR="${KILN_CASSANDRA_HOME:-$HOME/.cache/kiln/cassandra-$VERSION}"
LIB="$HOME_DIR/lib"
DATA_DIR="${KILN_CASSANDRA_DATA:-$HOME/.cache/kiln/cassandra-data}"
CQL_PORT=9042
STORAGE_PORT=7000
HEAP=1G
TIMEOUT=180

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "cassandra.sh: $*" >&2; exit 1; }

find_java() {
  local candidates=()
  [[ -n "${JAVA_HOME:-}" ]] && candidates+=("$JAVA_HOME/bin/java")
  candidates+=(/usr/lib/jvm/java-17-openjdk-amd64/bin/java /usr/lib/jvm/java-17-openjdk*/bin/java)
  command -v java >/dev/null && candidates+=("$(command -v java)")
  for j in "${candidates[@]}"; do
    [[ -x "$j" ]] || continue
    if "$j" -version 2>&1 | head -1 | grep -qE '"17(\.|")'; then echo "$j"; return; fi
  done
  die "Java 17 is required (Cassandra 5.0 runs on 11 or 17); set JAVA_HOME to a JDK 17"
}

install() {
  if [[ -f "$LIB/.complete" ]]; then return; fi
  command -v mvn >/dev/null || die "Maven (mvn) is required to fetch Cassandra from Maven Central"
  rm -rf "$LIB"; mkdir -p "$LIB"
  mvn -B -q -f "$HERE/cassandra/pom.xml" -Dcassandra.version="$VERSION" \
    org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$LIB" >&2
  ls "$LIB"/cassandra-all-*.jar >/dev/null 2>&1 || die "Maven did not fetch cassandra-all $VERSION"
  touch "$LIB/.complete"
}

parse_opts() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --data-dir) DATA_DIR="$2"; shift 2 ;;
      --cql-port) CQL_PORT="$2"; shift 2 ;;
      --storage-port) STORAGE_PORT="$2"; shift 2 ;;
      --heap) HEAP="$2"; shift 2 ;;
      --timeout) TIMEOUT="$2"; shift 2 ;;
      *) die "unknown option $1 (see --help)" ;;
    esac
  done
  mkdir -p "$DATA_DIR"
  DATA_DIR="$(cd "$DATA_DIR" && pwd)"
}

pid_alive() { [[ -f "$DATA_DIR/cassandra.pid" ]] && kill -0 "$(cat "$DATA_DIR/cassandra.pid")" 2>/dev/null; }

cql_ready() {  # a real CQL round trip, with the Python driver when kiln's venv has it
  local port="$1" py="$HERE/../.venv/bin/python"
  if [[ -x "$py" ]] && "$py" -c 'import cassandra' 2>/dev/null; then
    "$py" - "$port" <<'PY' 2>/dev/null
import sys, warnings
warnings.simplefilter("ignore")
from cassandra.cluster import Cluster
c = Cluster(["127.0.0.1"], port=int(sys.argv[1]), protocol_version=5, connect_timeout=2)
try:
    c.connect().execute("SELECT release_version FROM system.local", timeout=5).one()
finally:
    c.shutdown()
PY
  else
    grep -q "Startup complete" "$DATA_DIR/logs/system.log" 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
  fi
}

write_yaml() {
  cat > "$DATA_DIR/cassandra.yaml" <<YAML
cluster_name: kiln
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$STORAGE_PORT"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $STORAGE_PORT
native_transport_port: $CQL_PORT
start_native_transport: true
data_file_directories: [$DATA_DIR/data]
commitlog_directory: $DATA_DIR/commitlog
hints_directory: $DATA_DIR/hints
saved_caches_directory: $DATA_DIR/saved_caches
cdc_raw_directory: $DATA_DIR/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 32MiB
memtable_heap_space: 64MiB
memtable_offheap_space: 64MiB
memtable_allocation_type: heap_buffers
key_cache_size: 0MiB
counter_cache_size: 0MiB
concurrent_compactors: 1
auto_snapshot: false
incremental_backups: false
snapshot_before_compaction: false
hinted_handoff_enabled: false
authenticator:
  class_name: AllowAllAuthenticator
authorizer:
  class_name: AllowAllAuthorizer
paxos_variant: v2
storage_compatibility_mode: NONE
YAML
}

start() {
  parse_opts "$@"
  if pid_alive && cql_ready "$(cat "$DATA_DIR/cql.port" 2>/dev/null || echo "$CQL_PORT")"; then
    echo "127.0.0.1:$(cat "$DATA_DIR/cql.port")"; return
  fi
  install
  local java; java="$(find_java)"
  mkdir -p "$DATA_DIR/logs"
  write_yaml
  echo "$CQL_PORT" > "$DATA_DIR/cql.port"
  local jamm; jamm="$(ls "$LIB"/jamm-*.jar | head -1)"
  local opts=(
    -Xms"$HEAP" -Xmx"$HEAP" -Xss256k -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError -XX:+PerfDisableSharedMem
    -ea -da:net.openhft... -Djava.net.preferIPv4Stack=true -javaagent:"$jamm"
    -Djdk.attach.allowAttachSelf=true
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.management/com.sun.jmx.remote.security=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
    --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
    --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/java.io=ALL-UNNAMED --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED --add-opens java.base/java.util=ALL-UNNAMED
    --add-opens java.base/java.nio=ALL-UNNAMED --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    -Dio.netty.tryReflectionSetAccessible=true -Dio.netty.allocator.useCacheForAllThreads=true
    -Dio.netty.allocator.maxOrder=11
    -Dcassandra.config="file://$DATA_DIR/cassandra.yaml" -Dcassandra-foreground=yes
    -Dcassandra.storagedir="$DATA_DIR" -Dcassandra.logdir="$DATA_DIR/logs"
    -Dlogback.configurationFile="$HERE/cassandra/logback.xml"
    -Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.load_ring_state=false
    -Dcassandra.unsafesystem=true -Dcassandra.test.flush_local_schema_changes=false
  )
  if [[ "${KILN_CASSANDRA_FAST:-0}" == "1" ]]; then opts+=(-Dcassandra.skip_sync=true); fi
  nohup "$java" "${opts[@]}" -cp "$HERE/cassandra:$LIB/*" org.apache.cassandra.service.CassandraDaemon \
    > "$DATA_DIR/logs/stdout.log" 2>&1 < /dev/null &
  echo $! > "$DATA_DIR/cassandra.pid"
  local deadline=$(( $(date +%s) + TIMEOUT ))
  until cql_ready "$CQL_PORT"; do
    if ! pid_alive; then
      tail -n 40 "$DATA_DIR/logs/stdout.log" >&2; die "Cassandra exited during startup (log: $DATA_DIR/logs)"
    fi
    if (( $(date +%s) > deadline )); then
      tail -n 40 "$DATA_DIR/logs/stdout.log" >&2; stop_node; die "Cassandra not ready after ${TIMEOUT}s"
    fi
    sleep 1
  done
  echo "127.0.0.1:$CQL_PORT"
}

stop_node() {
  pid_alive || { rm -f "$DATA_DIR/cassandra.pid"; return 0; }
  local pid; pid="$(cat "$DATA_DIR/cassandra.pid")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$DATA_DIR/cassandra.pid"
}

kill_node() {  # no drain, no flush: the tests' node, whose data directory is deleted next, needs neither
  pid_alive || { rm -f "$DATA_DIR/cassandra.pid"; return 0; }
  local pid; pid="$(cat "$DATA_DIR/cassandra.pid")"
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$DATA_DIR/cassandra.pid"
}

case "${1:-}" in
  install) install; echo "$LIB" ;;
  start) shift; start "$@" ;;
  stop) shift; parse_opts "$@"; stop_node ;;
  kill) shift; parse_opts "$@"; kill_node ;;
  status) shift; parse_opts "$@"
          if pid_alive && cql_ready "$(cat "$DATA_DIR/cql.port")"; then echo "127.0.0.1:$(cat "$DATA_DIR/cql.port")"; else exit 1; fi ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
