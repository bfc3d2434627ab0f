#!/usr/bin/env bash
# Fetches the Kafka 4.1 broker jars from Maven Central (once, cached in ~/.m2) and runs a
# single-node KRaft broker on free loopback ports for tagtrail.
# Usage: kafka.sh start|stop|status
set -euo pipefail
source "$(dirname "$0")/common.sh"

KDIR="$LOCAL/kafka"
LIB="$KDIR/lib"
PIDFILE="$KDIR/kafka.pid"
LOGFILE="$KDIR/kafka.log"
JAVA_OPTS=${TAGTRAIL_KAFKA_JAVA_OPTS:-"-Xms256m -Xmx512m"}

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

fetch_jars() {
  [ -f "$LIB/.complete" ] && return
  command -v java >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null; }
  command -v mvn >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq maven >/dev/null; }
  log "fetching Kafka broker jars from Maven Central"
  rm -rf "$LIB"; mkdir -p "$LIB"
  mvn -q -B -Dstyle.color=never -f "$ROOT/deploy/local/kafka-pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$LIB" >&2
  touch "$LIB/.complete"
}

write_config() {
  local port=$1 cport=$2
  mkdir -p "$KDIR/data"
  cat > "$KDIR/log4j2.properties" <<CONF
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
CONF
  cat > "$KDIR/server.properties" <<CONF
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.quorum.bootstrap.servers=127.0.0.1:$cport
inter.broker.listener.name=PLAINTEXT
log.dirs=$KDIR/data
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
default.replication.factor=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
CONF
}

kjava() { java $JAVA_OPTS -Dlog4j2.configurationFile="file:$KDIR/log4j2.properties" -cp "$LIB/*" "$@"; }

start() {
  fetch_jars
  if running; then log "Kafka already running"; return; fi
  # Fresh ports and a fresh log each start: a stopped broker's ports may have been taken.
  local port cport id
  port=$(free_port); cport=$(free_port)
  while [ "$cport" = "$port" ]; do cport=$(free_port); done
  rm -rf "$KDIR/data"
  write_config "$port" "$cport"
  id=$(kjava kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)
  kjava kafka.tools.StorageTool format -t "$id" -c "$KDIR/server.properties" --standalone >/dev/null
  log "starting Kafka on 127.0.0.1:$port"
  nohup java $JAVA_OPTS -Dlog4j2.configurationFile="file:$KDIR/log4j2.properties" \
    -cp "$LIB/*" kafka.Kafka "$KDIR/server.properties" > "$LOGFILE" 2>&1 &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 120); do
    if grep -q "Kafka Server started" "$LOGFILE" 2>/dev/null; then
      set_env TAGTRAIL_KAFKA_BOOTSTRAP "127.0.0.1:$port"
      log "Kafka ready on 127.0.0.1:$port"
      return
    fi
    running || { tail -n 40 "$LOGFILE" >&2; log "Kafka failed to start"; exit 1; }
    sleep 0.5
  done
  tail -n 40 "$LOGFILE" >&2; log "Kafka did not start within 60 s"; exit 1
}

stop() {
  running || return 0
  local pid; pid=$(cat "$PIDFILE")
  kill "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
  log "Kafka stopped"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "kafka: running ($(grep BOOTSTRAP "$ENV_FILE" 2>/dev/null))"; else echo "kafka: stopped"; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
