#!/usr/bin/env bash
# `make run`: start the local stack, run model_lifecycle then batch_prediction end to end
# with `airflow dags test` (SQLite Airflow home under the state dir), print a summary, stop the stack.
# Settings: include/config.py (environment variables); ports and state dir from the Makefile.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-.venv}
PY=$ROOT/$VENV/bin/python
STATE_DIR=$(mkdir -p "${STATE_DIR:-.state}" && cd "${STATE_DIR:-.state}" && pwd)
GCS_PORT=${GCS_PORT:-9023}
ML_PORT=${ML_PORT:-8780}
LOG_DIR=$STATE_DIR/logs
mkdir -p "$LOG_DIR"
STARTED=$(date +%s)
elapsed() { echo $(( $(date +%s) - STARTED )); }
say() { printf '[run %4ss] %s\n' "$(elapsed)" "$*"; }

export PYTHONPATH=$ROOT:$ROOT/plugins
export STORAGE_EMULATOR_HOST=http://127.0.0.1:$GCS_PORT
export ML_ENGINE_ENDPOINT=http://127.0.0.1:$ML_PORT/
export AIRFLOW_HOME=$STATE_DIR/airflow
export AIRFLOW__CORE__DAGS_FOLDER=$ROOT/dags
export AIRFLOW__CORE__PLUGINS_FOLDER=$ROOT/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=sqlite:///$AIRFLOW_HOME/airflow.db
export AIRFLOW__LOGGING__BASE_LOG_FOLDER=$AIRFLOW_HOME/logs
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
mkdir -p "$AIRFLOW_HOME"

# Stop at the end only what this script started (services already up stay up).
started_services=0
cleanup() {
  if [[ $started_services == 1 ]]; then
    "$PY" -m tools.devstack stop --state-dir "$STATE_DIR" >/dev/null && say "services stopped"
  fi
}
trap cleanup EXIT

if curl -sf "http://127.0.0.1:$ML_PORT/healthz" >/dev/null 2>&1; then
  say "services already running on :$GCS_PORT / :$ML_PORT (left running)"
else
  say "starting the GCS emulator (:$GCS_PORT) and the ml/v1 service (:$ML_PORT)"
  "$PY" -m tools.devstack start --state-dir "$STATE_DIR" --gcs-port "$GCS_PORT" --ml-port "$ML_PORT" \
    > "$LOG_DIR/devstack.log" 2>&1 || { cat "$LOG_DIR/devstack.log"; exit 1; }
  started_services=1
fi
# The service's bearer token (made by `tools.devstack start`, 0600, reused): the hook sends it,
# and include.config puts it into the Airflow connection.
export ML_ENGINE_TOKEN=$(cat "$STATE_DIR/ml_engine_token" 2>/dev/null)
eval "$("$PY" -m include.config --exports)"
if [[ ${ML_PLATFORM:-ml_engine} == vertex ]]; then
  # Google's clients reach the local Vertex AI surface through the route (docs/vertex-ai.md)
  eval "$("$PY" -m tools.devstack env --state-dir "$STATE_DIR" --ml-port "$ML_PORT")"
  say "platform: Vertex AI (the local surface, through the route: grpc_proxy=$grpc_proxy)"
fi

say "airflow db migrate (SQLite under $AIRFLOW_HOME)"
"$VENV/bin/airflow" db migrate > "$LOG_DIR/airflow-db.log" 2>&1 || { tail -30 "$LOG_DIR/airflow-db.log"; exit 1; }

run_dag() {  # run_dag DAG_ID [LOG_NAME LOGICAL_DATE CONF] -> sets STATE_<DAG_ID>
  local dag_id=$1 log=$LOG_DIR/${2:-$1}.log
  local args=("$dag_id" ${3:+"$3"} ${4:+-c "$4"})
  say "airflow dags test ${args[*]} (log: $log)"
  if "$VENV/bin/airflow" dags test "${args[@]}" > "$log" 2>&1; then
    printf -v "STATE_$dag_id" success
  else
    printf -v "STATE_$dag_id" failed
    say "$dag_id FAILED; last lines of $log:"
    grep -E "ERROR|Error|Exception|FAILED" "$log" | tail -15
  fi
  say "$dag_id: $(eval echo "\$STATE_$dag_id")"
}

STATE_model_lifecycle=skipped
STATE_batch_prediction=skipped
# Each run trains on its own week of data (the local feed drifts week by week, docs/retrains.md).
# With no default yet, last week's retrain goes first, so this week's has a default to be judged against.
TODAY=$(date -u +%Y-%m-%d)
LAST_WEEK=$(date -u -d '7 days ago' +%Y-%m-%d)
if [[ -z "$("$PY" -m tools.run_summary --default 2>/dev/null)" ]]; then
  say "no default version yet: first a retrain on last week's data ($LAST_WEEK)"
  run_dag model_lifecycle model_lifecycle-last-week "${LAST_WEEK}T00:00:00+00:00" "{\"data_period\": \"$LAST_WEEK\"}"
fi
if [[ $STATE_model_lifecycle != failed ]]; then
  run_dag model_lifecycle model_lifecycle "" "{\"data_period\": \"$TODAY\"}"
fi
if [[ $STATE_model_lifecycle == success ]]; then
  run_dag batch_prediction
fi

echo
"$PY" -m tools.run_summary --lifecycle "$STATE_model_lifecycle" --batch "$STATE_batch_prediction" \
  --seconds "$(elapsed)"
echo "Logs: $LOG_DIR/  Airflow home: $AIRFLOW_HOME"
[[ $STATE_model_lifecycle == success && $STATE_batch_prediction == success ]]
