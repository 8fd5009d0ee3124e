#!/bin/bash
# flockd start-up script: makes this machine a clearml-agent worker and powers
# it off when the agent exits, so a dead agent never leaves a machine running.
# Rendered by flockd. It carries credentials: never add `set -x`, never echo
# a decoded value. Every value is embedded base64-encoded and decoded into a
# variable, so no secret ever passes through shell parsing.
set -uo pipefail
set +x
umask 077

bootstrap_dir="${FLOCKD_BOOTSTRAP_DIR:-/opt/flockd}"
metadata_attempts="${FLOCKD_METADATA_ATTEMPTS:-30}"
agent_status=""

log() { printf 'flockd-bootstrap: %s\n' "$*" >&2; }

# decode_into VAR BASE64: VAR gets the exact bytes, trailing newlines included.
decode_into() {
  local decoded
  decoded="$(printf '%s' "$2" | base64 -d && printf x)" || { log "corrupt embedded value for $1"; exit 1; }
  printf -v "$1" '%s' "${decoded%x}"
}

power_off() {
  trap - EXIT
  log "done (agent status: ${agent_status:-not started}); powering off"
  sync
  poweroff || shutdown -h now || systemctl poweroff
}
trap power_off EXIT
trap 'exit 143' TERM
trap 'exit 130' INT HUP

# GCE first: its metadata server answers only with the Metadata-Flavor header.
# Then EC2 with IMDSv2 (token PUT); IMDSv1 is never used.
detect_instance_id() {
  local token id
  if id="$(curl -fsS --max-time 2 -H 'Metadata-Flavor: Google' \
        'http://metadata.google.internal/computeMetadata/v1/instance/name')" && [ -n "$id" ]; then
    cloud=gcp instance_id="$id"
    return 0
  fi
  if token="$(curl -fsS --max-time 2 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' \
        'http://169.254.169.254/latest/api/token')" && [ -n "$token" ] &&
     id="$(curl -fsS --max-time 2 -H "X-aws-ec2-metadata-token: $token" \
        'http://169.254.169.254/latest/meta-data/instance-id')" && [ -n "$id" ]; then
    cloud=aws instance_id="$id"
    return 0
  fi
  return 1
}

cloud="" instance_id=""
for ((attempt = 1; attempt <= metadata_attempts; attempt++)); do
  detect_instance_id && break
  sleep 2
done
if [ -z "$instance_id" ]; then
  log "no GCE or EC2 (IMDSv2) metadata service answered after $metadata_attempts attempts; cannot name the worker"
  exit 1
fi
if [[ ! "$instance_id" =~ ^[A-Za-z0-9._-]+$ ]]; then
  log "instance id from $cloud metadata has unexpected characters; refusing to use it"
  exit 1
fi

decode_into worker_prefix @WORKER_PREFIX_B64@
export CLEARML_WORKER_ID="${worker_prefix}${instance_id}"
log "running on $cloud as worker $CLEARML_WORKER_ID"

mkdir -p "$bootstrap_dir" || exit 1
conf_file="$bootstrap_dir/clearml.conf"
printf '%s' @CONF_B64@ | base64 -d > "$conf_file.tmp" && mv -f "$conf_file.tmp" "$conf_file" ||
  { log "cannot write $conf_file"; exit 1; }
export CLEARML_CONFIG_FILE="$conf_file"
export HOME="${HOME:-/root}"

decode_into CLEARML_API_HOST @API_HOST_B64@
decode_into CLEARML_WEB_HOST @WEB_HOST_B64@
decode_into CLEARML_FILES_HOST @FILES_HOST_B64@
decode_into CLEARML_API_ACCESS_KEY @ACCESS_KEY_B64@
decode_into CLEARML_API_SECRET_KEY @SECRET_KEY_B64@
export CLEARML_API_HOST CLEARML_WEB_HOST CLEARML_FILES_HOST CLEARML_API_ACCESS_KEY CLEARML_API_SECRET_KEY

extra_script="$bootstrap_dir/pre-agent.sh"
printf '%s' @EXTRA_SCRIPT_B64@ | base64 -d > "$extra_script" || exit 1
if [ -s "$extra_script" ]; then
  log "running extra-bash-script"
  bash "$extra_script" || { log "extra-bash-script failed with status $?"; exit 1; }
fi

decode_into python_bin @PYTHON_B64@
decode_into agent_package @AGENT_PACKAGE_B64@
if ! "$python_bin" -m pip --version > /dev/null 2>&1; then
  log "pip missing; installing it with the system package manager"
  { command -v apt-get > /dev/null && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip; } ||
    { command -v dnf > /dev/null && dnf install -y -q python3-pip; } ||
    { command -v yum > /dev/null && yum install -y -q python3-pip; } ||
    log "could not install pip; trying anyway"
fi
log "installing $agent_package"
# PEP 668 distributions refuse system-wide installs unless told otherwise.
PIP_BREAK_SYSTEM_PACKAGES=1 "$python_bin" -m pip install --quiet --upgrade "$agent_package" ||
  { log "pip install $agent_package failed"; exit 1; }
export PATH="$PATH:/usr/local/bin:$HOME/.local/bin"

agent_args=(daemon)
@AGENT_ARGS@
log "starting clearml-agent"
clearml-agent "${agent_args[@]}"
agent_status=$?
log "clearml-agent exited with status $agent_status"
exit "$agent_status"
