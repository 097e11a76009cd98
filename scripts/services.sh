#!/usr/bin/env bash
# Local infrastructure for bulkwrites: Python venv, PostgreSQL, Redis,
# DynamoDB Local and an S3 server (moto), all kept under .local/ in the repository (gitignored).
#
# Usage: scripts/services.sh COMMAND [ARGS...]   (normally through the Makefile)
#   services  install what is missing, start Postgres, Redis and DynamoDB Local
#             and print `export NAME=value` lines on stdout; everything else
#             goes to stderr, so `eval "$(scripts/services.sh services)"` works
#   env       print the export lines only (starts nothing)
#   venv      create .venv / re-install requirements.txt when it changed
#   run       services + venv + migrate + `bulkwrite demo` + web server + worker
#   test      services + venv + lint + pytest (no test ran counts as a failure)
#   lint      ruff check + ruff format --check + mypy + lint-imports
#   worker    one RQ worker in the foreground
#   supervise-worker  run `manage.py rqworker bulkwrites` again whenever it exits
#             (what `make run` starts; stop it with `make stop`)
#   restart-redis [SECONDS] / restart-postgres [SECONDS]
#             stop the local server, wait SECONDS (default 0), start it again
#             (fault tests and the chaos bench use these)
#   bench     python bench/run.py
#   stop      stop web, worker, S3 (moto), DynamoDB Local, Redis and Postgres
#   clean     stop, then remove .local/
#
# Ports (override with the environment): PG_PORT=54329 REDIS_PORT=63799
# DYNAMODB_PORT=8770 WEB_PORT=8000 S3_PORT=8790. Every variable printed by `env` keeps a value
# already set in the environment; a service whose URL variable points somewhere
# else than the local default is not started (e.g. real AWS for DynamoDB).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
LOCAL="$ROOT/.local"
LOG_DIR="$LOCAL/log"
RUN_DIR="$LOCAL/run"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

PG_PORT="${PG_PORT:-54329}"
REDIS_PORT="${REDIS_PORT:-63799}"
DYNAMODB_PORT="${DYNAMODB_PORT:-8770}"
WEB_PORT="${WEB_PORT:-8000}"
S3_PORT="${S3_PORT:-8790}"

PGDATA_DIR="$LOCAL/pg"
PG_SOCKET_DIR="/tmp" # short and reachable by the postgres user; clients use TCP anyway

DDB_PKG="amplify-dynamodb-simulator"
DDB_VERSION="2.9.30"
DDB_TGZ_SHA256="3503ffac19f183407909fecdacf4db51ab1fdad1da7b2f177016670b2d80e4b9"
DDB_JAR_SHA256="454305e9bc3e6ebcca5b62569869e31563b8d7e346474e94557b2600702146c7"
DDB_DIR="$LOCAL/dynamodb"
DDB_EMULATOR="$DDB_DIR/package/emulator"

LOCAL_DATABASE_URL="postgres://bulkwrites@127.0.0.1:${PG_PORT}/bulkwrites"
LOCAL_REDIS_URL="redis://127.0.0.1:${REDIS_PORT}/0"
LOCAL_DYNAMODB_URL="http://127.0.0.1:${DYNAMODB_PORT}"
LOCAL_S3_URL="http://127.0.0.1:${S3_PORT}"
S3_VENV="$LOCAL/s3/venv"
S3_REQUIREMENTS="$ROOT/scripts/s3-requirements.txt"

# ---------------------------------------------------------------- helpers

log() { printf '[bulkwrites] %s\n' "$*" >&2; }
die() {
	printf '[bulkwrites] ERROR: %s\n' "$*" >&2
	exit 1
}
is_root() { [ "$(id -u)" -eq 0 ]; }
have() { command -v "$1" >/dev/null 2>&1; }

# wait_for SECONDS COMMAND...: retry COMMAND every 0.1 s until it succeeds.
wait_for() {
	local secs=$1 i
	shift
	for ((i = 0; i < secs * 10; i++)); do
		"$@" && return 0
		sleep 0.1
	done
	return 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Any HTTP status (DynamoDB Local answers GET / with 400) means it is up.
http_answers() {
	local code
	code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true)"
	[ -n "$code" ] && [ "$code" != "000" ]
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

check_sha256() {
	local file=$1 want=$2 got
	got="$(sha256_of "$file")"
	[ "$got" = "$want" ] || die "checksum mismatch for $file: expected $want, got $got"
}

# running PID: the process exists and is not a zombie waiting to be reaped.
running() {
	kill -0 "$1" 2>/dev/null || return 1
	local state=""
	[ -r "/proc/$1/stat" ] && state="$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)"
	[ "$state" != "Z" ]
}

# pid_alive PIDFILE PATTERN: the pid in PIDFILE runs and its command line
# contains PATTERN (guards against a recycled pid).
pid_alive() {
	local file=$1 pat=$2 pid
	[ -f "$file" ] || return 1
	pid="$(cat "$file" 2>/dev/null || true)"
	[[ "$pid" =~ ^[0-9]+$ ]] || return 1
	running "$pid" || return 1
	[ -r "/proc/$pid/cmdline" ] || return 0
	tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$pat"
}

# stop_pid NAME PATTERN: stop the process recorded in .local/run/NAME.pid.
stop_pid() {
	local name=$1 pat=$2 file="$RUN_DIR/$1.pid" pid i
	if ! pid_alive "$file" "$pat"; then
		rm -f "$file"
		return 0
	fi
	pid="$(cat "$file")"
	log "$name: stopping (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 150; i++)); do
		running "$pid" || break
		sleep 0.1
	done
	if running "$pid"; then
		log "$name: still running after 15 s, killing"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$file"
}

# start_bg NAME PATTERN COMMAND...: run COMMAND detached (own session, nohup)
# with .local/run/NAME.pid and .local/log/NAME.log, unless it already runs.
# It runs in $BG_CWD (default: the repository root).
start_bg() {
	local name=$1 pat=$2
	shift 2
	local pidf="$RUN_DIR/$name.pid" logf="$LOG_DIR/$name.log"
	if pid_alive "$pidf" "$pat"; then
		log "$name: already running (pid $(cat "$pidf"))"
		return 0
	fi
	mkdir -p "$RUN_DIR" "$LOG_DIR"
	printf '\n==== %s: %s\n' "$(date '+%F %T')" "$*" >>"$logf"
	(cd "${BG_CWD:-$ROOT}" && exec nohup setsid "$@" </dev/null >>"$logf" 2>&1) &
	echo $! >"$pidf"
	log "$name: started (pid $!, log ${logf#"$ROOT"/})"
}

show_log_tail() { [ -f "$1" ] && tail -n 30 "$1" | sed 's/^/    /' >&2 || true; }

# ---------------------------------------------------------------- packages

APT_UPDATED=0
apt_install() {
	[ $# -gt 0 ] || return 0
	have apt-get || die "missing system packages ($*) and no apt-get here: install them by hand"
	local -a sudo=()
	if ! is_root; then
		if have sudo && sudo -n true 2>/dev/null; then
			sudo=(sudo)
		else
			die "missing system packages ($*); install them as root: apt-get install $*"
		fi
	fi
	log "installing with apt-get: $*"
	if [ "$APT_UPDATED" = 0 ]; then
		"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
		APT_UPDATED=1
	fi
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" </dev/null >&2
}

find_pg_bin() {
	local d
	if have initdb; then
		# Often a symlink (e.g. /usr/local/bin/initdb): pg_isready and psql sit
		# beside the real one.
		d="$(dirname "$(readlink -f "$(command -v initdb)")")"
		if [ -x "$d/pg_ctl" ] && [ -x "$d/pg_isready" ] && [ -x "$d/psql" ]; then
			echo "$d"
			return 0
		fi
	fi
	d="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
	[ -x "$d/initdb" ] || return 1
	echo "$d"
}

ddb_installed() { [ -f "$DDB_DIR/.verified" ] && [ -f "$DDB_EMULATOR/DynamoDBLocal.jar" ]; }

ensure_packages() {
	local -a missing=()
	[ -n "$(find_pg_bin || true)" ] || missing+=(postgresql)
	have redis-server || missing+=(redis-server)
	have redis-cli || missing+=(redis-tools)
	have java || missing+=(default-jre-headless)
	have curl || missing+=(curl)
	have runuser || missing+=(util-linux)
	ddb_installed || have npm || missing+=(npm)
	# Browser tests (playwright) drive Debian's chromium, never a downloaded one.
	have chromium || missing+=(chromium)
	have chromedriver || missing+=(chromium-driver)
	apt_install "${missing[@]}"
}

# ---------------------------------------------------------------- python

find_python() {
	local p
	local -a cands=()
	[ -n "${PYTHON:-}" ] && cands+=("$PYTHON")
	cands+=(python3.13 python3.12)
	# pyenv shims on PATH fail unless PYENV_VERSION is set: try the real binaries.
	for p in "${PYENV_ROOT:-/root/.pyenv}"/versions/3.1[2-9]*/bin/python3 \
		/root/.pyenv/versions/3.1[2-9]*/bin/python3 \
		"$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3; do
		[ -x "$p" ] && cands+=("$p")
	done
	for p in "${cands[@]}"; do
		if "$p" -c 'import sys, venv; assert sys.version_info >= (3, 12)' >/dev/null 2>&1; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

ensure_python() {
	find_python || die "no Python >= 3.12 found (Django 6.1 needs it). Tried \$PYTHON, python3.13, python3.12 and ~/.pyenv/versions/3.1x; set PYTHON=/path/to/python3.12"
}

ensure_venv() {
	if [ -e "$VENV" ] || [ -L "$VENV" ]; then
		if ! "$PY" -c 'import sys; assert sys.version_info >= (3, 12)' >/dev/null 2>&1; then
			log ".venv is broken or older than Python 3.12: recreating it"
			rm -rf "$VENV"
		fi
	fi
	if [ ! -e "$VENV" ]; then
		local base
		base="$(ensure_python)"
		log "creating .venv with $base ($("$base" -V 2>&1))"
		"$base" -m venv "$VENV" >&2
	fi
	if [ ! -f "$VENV/.installed" ] || [ "$ROOT/requirements.txt" -nt "$VENV/.installed" ]; then
		log "installing requirements.txt into .venv (about a minute the first time)"
		"$PY" -m pip install --disable-pip-version-check --progress-bar off \
			-r "$ROOT/requirements.txt" >&2
		touch "$VENV/.installed"
	fi
}

# ---------------------------------------------------------------- postgres

# Run a PostgreSQL server command as the postgres user when we are root
# (postgres refuses to run as root), directly otherwise.
as_pg() {
	if is_root; then
		(cd / && runuser -u postgres -- "$@")
	else
		"$@"
	fi
}

# The data directory as the server sees it: .local/pg, or where it links to.
pg_data() {
	if [ -L "$PGDATA_DIR" ]; then
		readlink -f "$PGDATA_DIR"
	else
		echo "$PGDATA_DIR"
	fi
}

pg_log_file() {
	if [ -L "$PGDATA_DIR" ]; then
		echo "$(dirname "$(readlink -f "$PGDATA_DIR")")/postgres.log"
	else
		echo "$LOG_DIR/postgres.log"
	fi
}

# Create the data directory (owned by postgres when we are root) and initdb once.
pg_prepare() {
	local bin=$1
	mkdir -p "$LOCAL" "$LOG_DIR" "$RUN_DIR"
	if is_root; then
		id postgres >/dev/null 2>&1 || die "no 'postgres' system user (install the postgresql package)"
		chmod 755 "$LOCAL" "$LOG_DIR"
		if [ ! -e "$PGDATA_DIR" ] && ! runuser -u postgres -- test -x "$LOCAL" 2>/dev/null; then
			# The checkout sits below a directory the postgres user cannot
			# traverse (e.g. /root): keep the cluster in /tmp, link it here.
			local base
			base="/tmp/bulkwrites-pg-$(printf '%s' "$ROOT" | sha1sum | cut -c1-12)"
			log "postgres: the postgres user cannot reach $LOCAL (a parent directory is not traversable);"
			log "postgres: keeping the cluster in $base instead (.local/pg links to it)"
			mkdir -p "$base/data"
			chown postgres:postgres "$base" "$base/data"
			chmod 700 "$base/data"
			ln -sfn "$base/data" "$PGDATA_DIR"
			ln -sfn "$base/postgres.log" "$LOG_DIR/postgres.log"
		fi
		local data
		data="$(pg_data)"
		mkdir -p "$data"
		chown postgres:postgres "$data"
		chmod 700 "$data"
		runuser -u postgres -- test -w "$data/" 2>/dev/null ||
			die "the postgres user cannot write $data: make every parent directory of $ROOT traversable (chmod o+x)"
		local logf
		logf="$(pg_log_file)"
		touch "$logf"
		chown postgres:postgres "$logf"
	else
		mkdir -p "$PGDATA_DIR"
		chmod 700 "$PGDATA_DIR"
	fi

	local pgdata
	pgdata="$(pg_data)"
	[ -f "$pgdata/PG_VERSION" ] && return 0
	# A half-made cluster (initdb interrupted) is useless: start over.
	find "$pgdata/" -mindepth 1 -delete
	log "postgres: initdb in $pgdata"
	as_pg "$bin/initdb" -D "$pgdata" -U postgres --auth=trust -E UTF8 --locale=C >"$LOG_DIR/initdb.log" 2>&1 ||
		{
			show_log_tail "$LOG_DIR/initdb.log"
			die "initdb failed (see .local/log/initdb.log)"
		}
	cat >>"$pgdata/postgresql.conf" <<'CONF'

# ---- bulkwrites local dev/test cluster (scripts/services.sh) ----
# Port, listen address and socket dir are passed by pg_ctl -o at each start.
# This throwaway cluster trades crash safety for speed: never use these three
# settings on a database whose data matters.
fsync = off
synchronous_commit = off
full_page_writes = off
CONF
}

start_postgres() {
	if [ "${DATABASE_URL:-$LOCAL_DATABASE_URL}" != "$LOCAL_DATABASE_URL" ]; then
		log "postgres: DATABASE_URL points elsewhere; not starting the local cluster"
		return 0
	fi
	local bin
	bin="$(find_pg_bin)" || die "PostgreSQL server binaries (initdb) not found"
	if "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
		log "postgres: already up on 127.0.0.1:$PG_PORT"
	else
		pg_prepare "$bin"
		local logf
		logf="$(pg_log_file)"
		log "postgres: starting on 127.0.0.1:$PG_PORT"
		as_pg "$bin/pg_ctl" -D "$(pg_data)" -l "$logf" -w -t 60 \
			-o "-h 127.0.0.1 -p $PG_PORT -k $PG_SOCKET_DIR" start >/dev/null 2>&1 ||
			{
				show_log_tail "$logf"
				die "postgres did not start (see .local/log/postgres.log)"
			}
		head -n 1 "$PGDATA_DIR/postmaster.pid" >"$RUN_DIR/postgres.pid" 2>/dev/null || true
	fi

	# The app's role `bulkwrites` is NOT a superuser (a superuser can read server files and other
	# processes' environment, kill sessions, create replication slots, all from a read-only
	# transaction). CREATEDB is all pytest-django needs to create its test databases; test set-up
	# that needs more (login roles for SQL sources) connects as `postgres`, never as the app.
	local psql=("$bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres)
	local state
	state="$("${psql[@]}" -tAc "select (select count(*) from pg_roles where rolname = 'bulkwrites') || ',' || (select count(*) from pg_database where datname = 'bulkwrites') || ',' || (select count(*) from pg_roles where rolname = 'bulkwrites' and (rolsuper or rolreplication or rolbypassrls or rolcreaterole or not rolcreatedb))")" ||
		die "cannot connect to postgres on 127.0.0.1:$PG_PORT as user postgres"
	local roles="${state%%,*}" dbs rest="${state#*,}"
	dbs="${rest%%,*}"
	if [ "$roles" = 0 ]; then
		log "postgres: creating role bulkwrites (login, createdb; not a superuser)"
		"${psql[@]}" -c "create role bulkwrites login createdb nosuperuser noreplication nobypassrls nocreaterole" >&2
	elif [ "${rest#*,}" != 0 ]; then
		# Clusters made before the role lost its superuser attribute are fixed here.
		log "postgres: role bulkwrites: dropping superuser/replication/createrole (keeping login, createdb)"
		"${psql[@]}" -c "alter role bulkwrites login createdb nosuperuser noreplication nobypassrls nocreaterole" >&2
	fi
	if [ "$dbs" = 0 ]; then
		log "postgres: creating database bulkwrites"
		"${psql[@]}" -c "create database bulkwrites owner bulkwrites" >&2
	fi
}

# The demo shop's reader: a login role that may SELECT the demo tables and nothing else, the
# connection `demo` of SQL sources (BULKWRITES_SQL_DEMO). Run after migrate (the tables exist).
ensure_demo_reader() {
	if [ "${DATABASE_URL:-$LOCAL_DATABASE_URL}" != "$LOCAL_DATABASE_URL" ]; then
		log "postgres: DATABASE_URL points elsewhere; create a reader role yourself (README, Security model)"
		return 0
	fi
	local bin
	bin="$(find_pg_bin)" || die "PostgreSQL client binaries (psql) not found"
	"$bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d bulkwrites >&2 <<'SQL'
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bulkwrites_demo_reader') THEN
    CREATE ROLE bulkwrites_demo_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
  END IF;
END $$;
GRANT CONNECT ON DATABASE bulkwrites TO bulkwrites_demo_reader;
GRANT USAGE ON SCHEMA public TO bulkwrites_demo_reader;
GRANT SELECT ON public.demo_customer, public.demo_order TO bulkwrites_demo_reader;
SQL
	log "postgres: role bulkwrites_demo_reader may read demo_customer and demo_order (connection 'demo')"
}

# A local secret key for `make run`, `make worker` and `make bench`, made once and kept in
# .local/secret_key (the web process and the worker refuse to start without one, DEBUG off).
ensure_secret_key() {
	[ -n "${DJANGO_SECRET_KEY:-}" ] && return 0
	local file="$LOCAL/secret_key"
	if [ ! -s "$file" ]; then
		mkdir -p "$LOCAL"
		(umask 077 && "$PY" -c 'import secrets; print(secrets.token_urlsafe(50))' >"$file")
		log "generated a local secret key in .local/secret_key"
	fi
	DJANGO_SECRET_KEY="$(cat "$file")"
	export DJANGO_SECRET_KEY
}

stop_postgres() {
	local bin
	bin="$(find_pg_bin)" || return 0
	if [ -f "$PGDATA_DIR/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$(pg_data)" status >/dev/null 2>&1; then
		log "postgres: stopping"
		as_pg "$bin/pg_ctl" -D "$(pg_data)" -m fast -w -t 60 stop >/dev/null
	fi
	rm -f "$RUN_DIR/postgres.pid"
}

# ---------------------------------------------------------------- redis

redis_ping() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]; }

start_redis() {
	if [ "${REDIS_URL:-$LOCAL_REDIS_URL}" != "$LOCAL_REDIS_URL" ]; then
		log "redis: REDIS_URL points elsewhere; not starting the local server"
		return 0
	fi
	if redis_ping; then
		log "redis: already up on 127.0.0.1:$REDIS_PORT"
		return 0
	fi
	mkdir -p "$LOCAL/redis" "$LOG_DIR" "$RUN_DIR"
	log "redis: starting on 127.0.0.1:$REDIS_PORT"
	redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$LOCAL/redis" \
		--maxmemory-policy noeviction --save "" --appendonly no \
		--daemonize yes --pidfile "$RUN_DIR/redis.pid" --logfile "$LOG_DIR/redis.log" \
		</dev/null >&2
	wait_for 20 redis_ping || {
		show_log_tail "$LOG_DIR/redis.log"
		die "redis did not answer on port $REDIS_PORT (see .local/log/redis.log)"
	}
}

# ---------------------------------------------------------------- dynamodb

# Fetch DynamoDB Local from the npm registry (it ships inside
# amplify-dynamodb-simulator) into .local/dynamodb, checking both checksums.
install_dynamodb() {
	ddb_installed && return 0
	have npm || die "npm not found (needed once to fetch DynamoDB Local)"
	local tmp="$LOCAL/dynamodb.tmp" tgz
	rm -rf "$tmp"
	mkdir -p "$tmp"
	log "dynamodb: fetching $DDB_PKG@$DDB_VERSION from the npm registry"
	(cd "$tmp" && npm pack --ignore-scripts --silent "$DDB_PKG@$DDB_VERSION") >&2 ||
		die "npm pack $DDB_PKG@$DDB_VERSION failed"
	tgz="$tmp/$DDB_PKG-$DDB_VERSION.tgz"
	[ -f "$tgz" ] || die "npm pack did not produce $tgz"
	check_sha256 "$tgz" "$DDB_TGZ_SHA256"
	tar -xzf "$tgz" -C "$tmp" --no-same-owner
	check_sha256 "$tmp/package/emulator/DynamoDBLocal.jar" "$DDB_JAR_SHA256"
	[ -d "$tmp/package/emulator/DynamoDBLocal_lib" ] || die "DynamoDBLocal_lib missing from $DDB_PKG@$DDB_VERSION"
	rm -f "$tgz"
	touch "$tmp/.verified"
	rm -rf "$DDB_DIR"
	mv "$tmp" "$DDB_DIR"
	log "dynamodb: installed in ${DDB_DIR#"$ROOT"/} (checksums ok)"
}

start_dynamodb() {
	if [ "${AWS_ENDPOINT_URL_DYNAMODB:-$LOCAL_DYNAMODB_URL}" != "$LOCAL_DYNAMODB_URL" ]; then
		log "dynamodb: AWS_ENDPOINT_URL_DYNAMODB points elsewhere; not starting DynamoDB Local"
		return 0
	fi
	if http_answers "$LOCAL_DYNAMODB_URL"; then
		log "dynamodb: already up on 127.0.0.1:$DYNAMODB_PORT"
		return 0
	fi
	install_dynamodb
	check_sha256 "$DDB_EMULATOR/DynamoDBLocal.jar" "$DDB_JAR_SHA256"
	have java || die "java not found (DynamoDB Local needs a JRE)"
	log "dynamodb: starting DynamoDB Local on port $DYNAMODB_PORT (in memory)"
	# It writes dynamodb-local-metadata.json into its working directory: keep
	# that in .local/dynamodb. -disableTelemetry: no phoning home.
	BG_CWD="$DDB_DIR" start_bg dynamodb DynamoDBLocal.jar \
		java -Djava.library.path="$DDB_EMULATOR/DynamoDBLocal_lib" \
		-jar "$DDB_EMULATOR/DynamoDBLocal.jar" -inMemory -sharedDb -port "$DYNAMODB_PORT" -disableTelemetry
	local i
	for ((i = 0; i < 600; i++)); do
		http_answers "$LOCAL_DYNAMODB_URL" && return 0
		pid_alive "$RUN_DIR/dynamodb.pid" DynamoDBLocal.jar || break
		sleep 0.1
	done
	show_log_tail "$LOG_DIR/dynamodb.log"
	die "DynamoDB Local did not answer on port $DYNAMODB_PORT (see .local/log/dynamodb.log)"
}

# ---------------------------------------------------------------- s3 (moto)

# moto's server mode stands in for S3 locally (S3 sources: README, "Sources elsewhere"). It lives in
# its own virtualenv under .local/s3, so its many dependencies never meet the app's.
ensure_s3_venv() {
	if [ ! -x "$S3_VENV/bin/python" ]; then
		local base
		base="$(ensure_python)"
		mkdir -p "$LOCAL/s3"
		log "s3: creating .local/s3/venv for moto's server"
		"$base" -m venv "$S3_VENV" >&2
	fi
	if [ ! -f "$S3_VENV/.installed" ] || [ "$S3_REQUIREMENTS" -nt "$S3_VENV/.installed" ]; then
		log "s3: installing scripts/s3-requirements.txt (moto[server], pinned)"
		"$S3_VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off -q \
			-r "$S3_REQUIREMENTS" >&2
		touch "$S3_VENV/.installed"
	fi
}

start_s3() {
	if [ "${AWS_ENDPOINT_URL_S3:-$LOCAL_S3_URL}" != "$LOCAL_S3_URL" ]; then
		log "s3: AWS_ENDPOINT_URL_S3 points elsewhere; not starting moto"
		return 0
	fi
	if http_answers "$LOCAL_S3_URL"; then
		log "s3: already up on 127.0.0.1:$S3_PORT"
		return 0
	fi
	ensure_s3_venv
	log "s3: starting moto's S3 server on port $S3_PORT (in memory)"
	start_bg s3 moto_server "$S3_VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT"
	local i
	for ((i = 0; i < 600; i++)); do
		http_answers "$LOCAL_S3_URL" && return 0
		pid_alive "$RUN_DIR/s3.pid" moto_server || break
		sleep 0.1
	done
	show_log_tail "$LOG_DIR/s3.log"
	die "moto's S3 server did not answer on port $S3_PORT (see .local/log/s3.log)"
}

# ---------------------------------------------------------------- environment

is_local_endpoint() {
	case "$1" in
	http://127.0.0.1:* | http://localhost:* | "http://[::1]:"*) return 0 ;;
	*) return 1 ;;
	esac
}

# The environment the app reads. Values already set are kept.
print_env() {
	local ddb="${AWS_ENDPOINT_URL_DYNAMODB:-$LOCAL_DYNAMODB_URL}"
	local s3="${AWS_ENDPOINT_URL_S3:-$LOCAL_S3_URL}"
	local region="${AWS_REGION:-${AWS_DEFAULT_REGION:-us-east-1}}"
	printf 'export %s=%q\n' \
		DATABASE_URL "${DATABASE_URL:-$LOCAL_DATABASE_URL}" \
		REDIS_URL "${REDIS_URL:-$LOCAL_REDIS_URL}" \
		AWS_ENDPOINT_URL_DYNAMODB "$ddb" \
		AWS_ENDPOINT_URL_S3 "$s3" \
		AWS_REGION "$region" \
		AWS_DEFAULT_REGION "${AWS_DEFAULT_REGION:-$region}"
	# The demo shop's reader role (created by `make run`), as the SQL-source connection `demo`.
	if [ "${DATABASE_URL:-$LOCAL_DATABASE_URL}" = "$LOCAL_DATABASE_URL" ]; then
		printf 'export %s=%q\n' BULKWRITES_SQL_DEMO \
			"${BULKWRITES_SQL_DEMO:-postgres://bulkwrites_demo_reader@127.0.0.1:${PG_PORT}/bulkwrites}"
	fi
	# botocore reads AWS_DEFAULT_REGION, not AWS_REGION, hence both above.
	# DynamoDB Local and moto want some credentials but never check them.
	if is_local_endpoint "$ddb" || is_local_endpoint "$s3"; then
		[ -n "${AWS_ACCESS_KEY_ID:-}" ] || printf 'export AWS_ACCESS_KEY_ID=local\n'
		[ -n "${AWS_SECRET_ACCESS_KEY:-}" ] || printf 'export AWS_SECRET_ACCESS_KEY=local\n'
	fi
	# The ports in use, read from the URLs above (a URL set by hand wins over *_PORT), so a later
	# `make run` or `make worker` in the same shell finds the same services.
	printf 'export PG_PORT=%s REDIS_PORT=%s DYNAMODB_PORT=%s WEB_PORT=%s S3_PORT=%s\n' \
		"$(url_port "${DATABASE_URL:-$LOCAL_DATABASE_URL}" 5432)" \
		"$(url_port "${REDIS_URL:-$LOCAL_REDIS_URL}" 6379)" \
		"$(url_port "$ddb" 443)" "$WEB_PORT" "$(url_port "$s3" 443)"
	return 0
}

# url_port URL DEFAULT: the port of URL (scheme://[user@]host[:port][/path]), or DEFAULT.
url_port() {
	local rest=${1#*://}
	rest=${rest%%/*}
	rest=${rest##*@}
	case "$rest" in
	\[*\]:*) echo "${rest##*]:}" ;;
	\[*) echo "$2" ;;
	*:*) echo "${rest##*:}" ;;
	*) echo "$2" ;;
	esac
}

start_services() {
	ensure_packages
	start_postgres
	start_redis
	start_dynamodb
	start_s3
}

# Start the services and export their environment into this process.
services_env() {
	start_services
	eval "$(print_env)"
}

# ---------------------------------------------------------------- worker supervisor

# The supervisor's loop: start the worker (on $BULKWRITES_QUEUE), and start it again (after 1 s, at most every 5 s)
# whenever it exits, until the supervisor is told to stop (SIGTERM/SIGINT: the worker gets a
# warm shutdown first). Its pid is .local/run/worker-supervisor.pid, the worker's worker.pid.
cmd_supervise_worker() {
	mkdir -p "$RUN_DIR"
	local child="" stopping=0 started
	# shellcheck disable=SC2317
	on_stop() {
		stopping=1
		[ -n "$child" ] && kill -TERM "$child" 2>/dev/null
	}
	trap on_stop TERM INT
	while [ "$stopping" = 0 ]; do
		started=$SECONDS
		"$PY" manage.py rqworker "${BULKWRITES_QUEUE:-bulkwrites}" &
		child=$!
		echo "$child" >"$RUN_DIR/worker.pid"
		local rc=0
		wait "$child" || rc=$?
		# A trapped signal interrupts `wait`: let the worker finish its warm shutdown.
		while running "$child"; do wait "$child" 2>/dev/null || true; done
		child=""
		[ "$stopping" = 1 ] && break
		log "worker exited (status $rc); starting it again"
		sleep $((SECONDS - started < 5 ? 5 : 1))
	done
	rm -f "$RUN_DIR/worker.pid"
}

# restart_redis SECONDS: stop the local Redis, wait, start it again (empty: it keeps no data).
cmd_restart_redis() {
	local down=${1:-0}
	if redis_ping; then
		log "redis: stopping"
		redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
		wait_for 20 bash -c "! (exec 3<>/dev/tcp/127.0.0.1/$REDIS_PORT) 2>/dev/null" || true
	fi
	sleep "$down"
	start_redis
}

# restart_postgres SECONDS: stop the local cluster (fast: sessions are cut), wait, start it again.
cmd_restart_postgres() {
	local down=${1:-0} bin
	bin="$(find_pg_bin)" || die "PostgreSQL server binaries not found"
	stop_postgres
	sleep "$down"
	start_postgres
}

stop_all() {
	stop_pid web runserver
	stop_pid worker-supervisor supervise-worker
	stop_pid worker rqworker
	stop_pid s3 moto_server
	stop_pid dynamodb DynamoDBLocal.jar
	stop_pid redis redis-server
	stop_postgres
}

# ---------------------------------------------------------------- commands

cmd_services() {
	# Only the export lines may reach stdout.
	exec 3>&1 1>&2
	local t0=$SECONDS
	# Servers started here must not inherit fd 3: `eval "$(make -s services)"` waits until every
	# holder of that stdout has closed it, i.e. until the servers stop.
	start_services 3>&-
	print_env >&3
	log "services ready ($((SECONDS - t0)) s); logs in .local/log/"
}

# mypy over the files of pyproject.toml's [tool.mypy]: any error fails (there is no baseline of
# tolerated errors).
typecheck() {
	"$VENV/bin/mypy"
}

cmd_lint() {
	ensure_venv
	cd "$ROOT"
	local rc=0
	"$VENV/bin/ruff" check . || rc=1
	"$VENV/bin/ruff" format --check . || rc=1
	typecheck || rc=1
	"$VENV/bin/lint-imports" --no-cache || rc=1
	return "$rc"
}

cmd_test() {
	services_env
	ensure_venv
	cd "$ROOT"
	local check_rc=0 format_rc=0 types_rc=0 imports_rc=0 pytest_rc=0
	echo "==> ruff check ."
	"$VENV/bin/ruff" check . || check_rc=$?
	echo "==> ruff format --check ."
	"$VENV/bin/ruff" format --check . || format_rc=$?
	echo "==> mypy (any error fails)"
	typecheck || types_rc=1
	echo "==> lint-imports (docs/architecture.md)"
	"$VENV/bin/lint-imports" --no-cache || imports_rc=$?
	echo "==> python -m pytest $*"
	"$PY" -m pytest "$@" || pytest_rc=$?

	local failed=0 tests
	case "$pytest_rc" in
	0) tests="ok" ;;
	5)
		tests="FAILED: pytest collected no tests (exit 5); a run with no tests counts as none"
		failed=1
		;;
	*)
		tests="FAILED (pytest exit $pytest_rc)"
		failed=1
		;;
	esac
	[ "$check_rc" = 0 ] && [ "$format_rc" = 0 ] && [ "$types_rc" = 0 ] && [ "$imports_rc" = 0 ] || failed=1
	echo "==> summary"
	echo "    ruff check:   $([ "$check_rc" = 0 ] && echo ok || echo FAILED)"
	echo "    ruff format:  $([ "$format_rc" = 0 ] && echo ok || echo "FAILED (run: .venv/bin/ruff format .)")"
	echo "    mypy:         $([ "$types_rc" = 0 ] && echo ok || echo FAILED)"
	echo "    lint-imports: $([ "$imports_rc" = 0 ] && echo ok || echo FAILED)"
	echo "    pytest:       $tests"
	if [ "$failed" = 0 ]; then
		echo "==> make test: OK"
	else
		echo "==> make test: FAILED"
		return 1
	fi
}

cmd_run() {
	services_env
	ensure_venv
	cd "$ROOT"
	export BULKWRITES_ADMIN_PASSWORD="${BULKWRITES_ADMIN_PASSWORD:-admin}"
	export PYTHONUNBUFFERED=1
	# A development server: DEBUG on (it is off unless asked for) and a kept local secret key.
	export DJANGO_DEBUG="${DJANGO_DEBUG:-1}"
	ensure_secret_key
	log "manage.py migrate"
	"$PY" manage.py migrate --noinput >&2
	ensure_demo_reader
	log "manage.py bulkwrite demo"
	"$PY" manage.py bulkwrite demo

	if ! pid_alive "$RUN_DIR/web.pid" runserver && port_open "$WEB_PORT"; then
		die "port $WEB_PORT is taken by another program; stop it or set WEB_PORT"
	fi
	start_bg web runserver "$PY" manage.py runserver "127.0.0.1:$WEB_PORT" --noreload
	local i
	for ((i = 0; i < 300; i++)); do
		port_open "$WEB_PORT" && break
		pid_alive "$RUN_DIR/web.pid" runserver || break
		sleep 0.1
	done
	port_open "$WEB_PORT" || {
		show_log_tail "$LOG_DIR/web.log"
		die "the web server did not start (see .local/log/web.log)"
	}
	# Supervised: a worker that dies anyway (a bug, OOM) is started again. In production a
	# service manager does this (README: systemd with Restart=always).
	start_bg worker-supervisor supervise-worker "$ROOT/scripts/services.sh" supervise-worker

	cat <<MSG

bulkwrites is running
  admin:  http://127.0.0.1:$WEB_PORT/admin/
  login:  admin / $BULKWRITES_ADMIN_PASSWORD
  logs:   .local/log/web.log, worker-supervisor.log (the worker), postgres.log, redis.log, dynamodb.log
  env:    eval "\$(make -s services)"   (for manage.py commands by hand)
  stop:   make stop
MSG
}

cmd_worker() {
	services_env
	ensure_venv
	cd "$ROOT"
	ensure_secret_key
	exec "$PY" manage.py rqworker "${BULKWRITES_QUEUE:-bulkwrites}" "$@"
}

cmd_bench() {
	services_env
	ensure_venv
	cd "$ROOT"
	ensure_secret_key
	exec "$PY" bench/run.py "$@"
}

cmd_clean() {
	stop_all
	if [ -L "$PGDATA_DIR" ]; then
		local base
		base="$(dirname "$(readlink -f "$PGDATA_DIR")")"
		case "$base" in /tmp/bulkwrites-pg-*) rm -rf "$base" ;; esac
	fi
	rm -rf "$LOCAL"
	log "removed .local/"
}

main() {
	local cmd="${1:-}"
	[ $# -gt 0 ] && shift
	case "$cmd" in
	services) cmd_services ;;
	env) print_env ;;
	venv) ensure_venv ;;
	python) ensure_python ;;
	packages) ensure_packages ;;
	run) cmd_run ;;
	test) cmd_test "$@" ;;
	lint) cmd_lint ;;
	worker) cmd_worker "$@" ;;
	bench) cmd_bench "$@" ;;
	supervise-worker)
		ensure_venv
		cd "$ROOT"
		cmd_supervise_worker
		;;
	restart-redis) cmd_restart_redis "$@" ;;
	restart-postgres) cmd_restart_postgres "$@" ;;
	stop) stop_all ;;
	clean) cmd_clean ;;
	*)
		echo "usage: $0 {services|env|venv|run|test|lint|worker|supervise-worker|restart-redis|restart-postgres|bench|stop|clean}" >&2
		exit 2
		;;
	esac
}

main "$@"
