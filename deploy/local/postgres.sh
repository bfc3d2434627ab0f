#!/usr/bin/env bash
# Installs PostgreSQL 15 + PostGIS 3 from Debian packages (once) and runs a private
# cluster for tagtrail: its own data directory, port and socket, run as the postgres user.
# Usage: postgres.sh start|stop|status|psql
set -euo pipefail
source "$(dirname "$0")/common.sh"

PGVER=15
PGBIN=/usr/lib/postgresql/$PGVER/bin
# The cluster lives outside the checkout because the postgres user must be able to reach
# it, and a clone under /root is not traversable by that user.
KEY=$(printf '%s' "$ROOT" | sha1sum | cut -c1-10)
PGROOT=${TAGTRAIL_PG_ROOT:-/var/lib/tagtrail/$KEY}
PGDATA="$PGROOT/data"
PGSOCK="$PGROOT/run"
DB_USER=tagtrail
DB_PASSWORD=${TAGTRAIL_LOCAL_DB_PASSWORD:-tagtrail-dev}
DB_NAME=tagtrail

as_pg() { PGOPTIONS="-c client_min_messages=warning" runuser -u postgres -- "$@"; }

install_packages() {
  if [ -x "$PGBIN/initdb" ] && [ -f /usr/share/postgresql/$PGVER/extension/postgis.control ]; then
    return
  fi
  log "installing postgresql-$PGVER and postgis from Debian packages"
  # Do not let the package create and start a system-wide 'main' cluster on 5432.
  mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/tagtrail.conf
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    "postgresql-$PGVER" "postgresql-$PGVER-postgis-3" >/dev/null
}

port() { cat "$PGROOT/port"; }

running() { [ -f "$PGDATA/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }

init_cluster() {
  [ -f "$PGDATA/PG_VERSION" ] && return
  log "creating cluster in $PGDATA"
  mkdir -p "$PGROOT" "$PGSOCK"
  chown postgres:postgres "$PGROOT" "$PGSOCK"
  chmod 0755 "$PGROOT" "$PGSOCK"
  free_port > "$PGROOT/port"
  as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >/dev/null
  cat >> "$PGDATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $(port)
unix_socket_directories = '$PGSOCK'
max_connections = 200
shared_buffers = 256MB
fsync = on
synchronous_commit = on
CONF
}

# pg_stat_statements, for the throughput benchmark's figures a statement: loaded when
# the cluster starts, so a cluster made before it was added gets it and is restarted.
configure_cluster() {
  # tagtrail connects through the cluster's Unix socket, with its password: on one
  # machine that costs both sides less than loopback TCP, where the sender's write also
  # runs the receiver's protocol work (docs/benchmarks.md, eleventh session). The line
  # goes before `local all all peer`, which the superuser (run as postgres) keeps.
  local hba="$PGDATA/pg_hba.conf"
  if ! grep -Eq "^local[[:space:]]+all[[:space:]]+$DB_USER[[:space:]]+scram-sha-256" "$hba"; then
    sed -i "0,/^local/s//local   all             $DB_USER                                scram-sha-256\nlocal/" "$hba"
    if running; then as_pg "$PGBIN/pg_ctl" -D "$PGDATA" reload >/dev/null; fi
  fi
  grep -q "^shared_preload_libraries = 'pg_stat_statements'" "$PGDATA/postgresql.conf" && return
  echo "shared_preload_libraries = 'pg_stat_statements'" >> "$PGDATA/postgresql.conf"
  if running; then
    log "restarting PostgreSQL to load pg_stat_statements"
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGROOT/postgres.log" -m fast -w -t 60 restart >/dev/null
  fi
}

start_cluster() {
  if running; then return; fi
  log "starting PostgreSQL on 127.0.0.1:$(port)"
  as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGROOT/postgres.log" -w -t 60 start >/dev/null
}

provision() {
  local q="$PGBIN/psql -h $PGSOCK -p $(port) -U postgres -v ON_ERROR_STOP=1 -qtAX"
  if [ -z "$(as_pg $q -d postgres -c "select 1 from pg_roles where rolname='$DB_USER'")" ]; then
    as_pg $q -d postgres -c "create role $DB_USER login createdb password '$DB_PASSWORD'"
  fi
  # PostGIS in template1: every database tagtrail creates (tests make their own) has it,
  # without giving the application role superuser rights.
  as_pg $q -d template1 -c "create extension if not exists postgis"
  # The benchmark reads and resets the statements of its own database only (the view
  # lives in the postgres database; the counts are the whole cluster's).
  as_pg $q -d postgres -c "create extension if not exists pg_stat_statements"
  as_pg $q -d postgres -c "grant pg_read_all_stats to $DB_USER"
  as_pg $q -d postgres -c "grant execute on function pg_stat_statements_reset(oid, oid, bigint) to $DB_USER"
  if [ -z "$(as_pg $q -d postgres -c "select 1 from pg_database where datname='$DB_NAME'")" ]; then
    as_pg $q -d postgres -c "create database $DB_NAME owner $DB_USER"
  fi
  set_env TAGTRAIL_DB_HOST "$PGSOCK"
  set_env TAGTRAIL_DB_PORT "$(port)"
  set_env TAGTRAIL_DB_USER "$DB_USER"
  set_env TAGTRAIL_DB_PASSWORD "$DB_PASSWORD"
  set_env TAGTRAIL_DB_NAME "$DB_NAME"
}

case "${1:-start}" in
  start)
    install_packages
    init_cluster
    configure_cluster
    start_cluster
    provision
    log "PostGIS ready on $PGSOCK and 127.0.0.1, port $(port) (database $DB_NAME)"
    ;;
  stop)
    if [ -f "$PGDATA/PG_VERSION" ] && running; then
      as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null && log "PostgreSQL stopped"
    fi
    ;;
  status)
    if running; then echo "postgres: running on 127.0.0.1:$(port)"; else echo "postgres: stopped"; fi
    ;;
  psql)
    shift
    exec runuser -u postgres -- "$PGBIN/psql" -h "$PGSOCK" -p "$(port)" -U postgres -d "$DB_NAME" "$@"
    ;;
  *) echo "usage: $0 start|stop|status|psql" >&2; exit 2 ;;
esac
