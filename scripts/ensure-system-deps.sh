#!/usr/bin/env bash
# What the tests need from the OS, installed from Debian's packages when missing.
# Without root (a laptop), it only says what is missing: those tests skip there.
set -u
need=()
have_pg() {
  command -v initdb >/dev/null 2>&1 && return 0
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}
have_pg || need+=(postgresql)
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
# The MySQL target's tests start their own mariadbd (tests/mariaharness.py); the client is for `schema --sql`.
{ command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]; } || need+=(mariadb-server)
command -v mariadb >/dev/null 2>&1 || need+=(mariadb-client)
command -v node >/dev/null 2>&1 || need+=(nodejs)
# The real OpenClaw gateway's test installs Node 24 and the gateway from npm (scripts/ensure-openclaw.sh).
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v wrk >/dev/null 2>&1 || need+=(wrk)  # the webhook benchmark's load generator
# The dashboard and alert rules are evaluated by a real Prometheus (promtool comes with it);
# `outbox-relay top` is driven on a real terminal under tmux.
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || need+=(prometheus)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
# A wall clock stepped under a running service, a host clock a day ahead during `backfill feishu`:
# libfaketime (tests/operate/test_clock.py, tests/backfill/).
command -v faketime >/dev/null 2>&1 || need+=(faketime)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing for the tests: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || { echo "could not install ${need[*]}" >&2; exit 1; }
else
  echo "missing (tests that need them will skip outside CI): ${need[*]}" >&2
fi
