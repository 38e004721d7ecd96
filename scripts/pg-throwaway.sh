#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server from the installed binaries, for the
# tests that need to stop and restart a database (or for a machine with no
# server of its own). Usage:
#   scripts/pg-throwaway.sh start DIR PORT   # initdb (trust auth) + start on 127.0.0.1:PORT
#   scripts/pg-throwaway.sh restart DIR      # fast restart
#   scripts/pg-throwaway.sh stop DIR [MODE]  # stop, fast or immediate (the data stays in DIR)
# Prints nothing on success. Needs the PostgreSQL server binaries
# (/usr/lib/postgresql/*/bin); run as root it runs the server as `postgres`.
set -euo pipefail
cmd=${1:?start|restart|stop}; dir=${2:?data directory}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$bin/pg_ctl" ] || { echo "no PostgreSQL server binaries under /usr/lib/postgresql" >&2; exit 3; }
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case "$cmd" in
  start)
    port=${3:?port}
    if [ ! -f "$dir/PG_VERSION" ]; then
      mkdir -p "$dir"
      [ "$(id -u)" = 0 ] && chown postgres: "$dir"
      as_owner "$bin/initdb" -D "$dir" -A trust -U postgres --no-sync >/dev/null
    fi
    as_owner "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 30 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
    ;;
  restart) as_owner "$bin/pg_ctl" -D "$dir" -m fast -w -t 30 restart >/dev/null ;;
  stop) as_owner "$bin/pg_ctl" -D "$dir" -m "${3:-fast}" -w -t 30 stop >/dev/null ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
