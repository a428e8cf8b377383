#!/usr/bin/env bash
# Install the PostgreSQL server binaries (initdb, pg_ctl) that tests/integration/test_postgres.py
# starts a throw-away server with: Debian/Ubuntu's `postgresql` package (PostgreSQL 15 on
# Debian 12). No cluster is created or started; the test makes its own on a free port.
#
#   bash scripts/install-postgres.sh     # as root (or with sudo); quiet; exit 0 when installed
#
# Idempotent: does nothing when a server is already installed. The Python driver is separate:
# the `bratslab[postgres]` extra (psycopg 3).
set -euo pipefail

have_server() {
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null
}
have_server && exit 0

if ! command -v apt-get >/dev/null; then
  echo "install-postgres: no apt-get here; install PostgreSQL (initdb, pg_ctl) yourself" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install-postgres: run as root (or install sudo)" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
# Keep the package from creating (and, where services run, starting) a `main` cluster on 5432.
if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
  "${sudo[@]}" mkdir -p /etc/postgresql-common
  echo "create_main_cluster = false" | "${sudo[@]}" tee /etc/postgresql-common/createcluster.conf >/dev/null
fi
"${sudo[@]}" apt-get update -qq >/dev/null
"${sudo[@]}" apt-get install -y -qq --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold postgresql >/dev/null
have_server || { echo "install-postgres: installed, but no initdb found" >&2; exit 1; }
