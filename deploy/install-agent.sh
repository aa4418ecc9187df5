#!/bin/sh
# Installs the failover agent on this node: the binary, a configuration
# (kept if one exists for the same node id), a hook, and the systemd unit,
# then starts it.
#
#   sudo deploy/install-agent.sh --node-id rec-1 --coordinator http://coord:7400 \
#        [--binary target/release/failover-agent] [--hook /path/to/hook.sh] [--force]
#
# --hook PATH: the hook the agent runs on every role change. If no file is
#   there yet, the example hook (it only logs) is installed at PATH for you
#   to edit.
# --force: replace an existing configuration (kept as agent.toml.bak) —
#   needed when it was written for another node id, or to change the
#   coordinator URL or hook of an installed agent.
# --root DIR installs under DIR instead of / and does not touch systemd
# (for packaging, and for the project's own tests).
#
# Nothing is changed unless everything checks: the new configuration is
# checked with the new binary's `--check-config` first; then the binary,
# the hook and the configuration (moved into place whole) are installed.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
binary="$here/../target/release/failover-agent"
root=""
node_id=""
coordinator="http://127.0.0.1:7400"
hook=""
force=0

usage() { echo "usage: $0 --node-id ID [--coordinator URL] [--binary PATH] [--hook PATH] [--force] [--root DIR]" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --node-id) node_id="${2:?}"; shift 2 ;;
    --coordinator) coordinator="${2:?}"; shift 2 ;;
    --binary) binary="${2:?}"; shift 2 ;;
    --hook) hook="${2:?}"; shift 2 ;;
    --root) root="${2:?}"; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) usage ;;
    *) echo "unknown option: $1" >&2; usage ;;
  esac
done
[ -n "$node_id" ] || { echo "error: --node-id is required" >&2; usage; }
[ -x "$binary" ] || { echo "error: no agent binary at $binary (cargo build --release -p agent)" >&2; exit 1; }
case "$hook" in
  ""|/*) ;;
  *) echo "error: --hook must be an absolute path, got $hook" >&2; exit 2 ;;
esac

config="$root/etc/failover/agent.toml"
state_dir="/var/lib/failover-agent"

# An existing configuration for another node id is a mistake to stop at:
# two machines with one node id are duplicates the coordinator refuses.
keep=0
if [ -f "$config" ]; then
  existing=$(sed -n "s/^[[:space:]]*node_id[[:space:]]*=[[:space:]]*[\"']\([^\"']*\)[\"'].*/\1/p" "$config" | head -n 1)
  if [ "$existing" = "$node_id" ] && [ "$force" = 0 ]; then
    keep=1
  elif [ "$force" = 1 ]; then
    echo "replacing $config written for node id '$existing' (kept as $config.bak)"
  else
    echo "error: $config is for node id '$existing', not '$node_id': run with --force to replace it, or pass --node-id $existing" >&2
    exit 1
  fi
fi

# Check everything with the new binary before changing anything.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
new_config="$work/agent.toml"
{
  echo "node_id = \"$node_id\""
  echo "coordinator = \"$coordinator\""
  echo "state_dir = \"$state_dir\""
  echo
  echo "[hooks]"
  if [ -n "$hook" ]; then echo "on_role_change = \"$hook\""; fi
  echo "timeout = \"30s\""
} > "$new_config"
if [ -n "$hook" ] && [ -e "$root$hook" ] && [ ! -x "$root$hook" ]; then
  echo "error: the hook $hook is not executable (chmod +x it); nothing was changed" >&2
  exit 1
fi
if [ "$keep" = 0 ]; then
  # As the agent will see it once installed: the hook (the example one if
  # none is there yet) and the state directory.
  check_hook="$root$hook"
  [ -z "$hook" ] || [ -e "$check_hook" ] || check_hook="$here/on-role-change.example.sh"
  mkdir -p "$work/state"
  sed -e "s|^state_dir = .*|state_dir = \"$work/state\"|" \
      -e "s|^on_role_change = .*|on_role_change = \"$check_hook\"|" "$new_config" > "$work/check.toml"
  if ! "$binary" --config "$work/check.toml" --check-config > /dev/null; then
    echo "error: the new configuration was refused; nothing was changed" >&2
    exit 1
  fi
fi

install -d "$root/usr/local/bin" "$root/etc/failover" "$root/etc/systemd/system" "$root$state_dir"
install -m 0755 "$binary" "$root/usr/local/bin/failover-agent"

if [ -n "$hook" ] && [ ! -e "$root$hook" ]; then
  install -d "$(dirname "$root$hook")"
  install -m 0755 "$here/on-role-change.example.sh" "$root$hook"
  echo "installed the example hook at $hook: edit it to start and stop your service"
fi

if [ "$keep" = 1 ]; then
  echo "keeping existing $config (its node id is $node_id; --force rewrites it)"
else
  tmp="$config.tmp.$$"
  cp "$new_config" "$tmp"
  chmod 0644 "$tmp"
  if [ -f "$config" ]; then cp -p "$config" "$config.bak"; fi
  mv "$tmp" "$config"
fi

install -m 0644 "$here/systemd/failover-agent.service" "$root/etc/systemd/system/failover-agent.service"

if [ -z "$root" ]; then
  systemctl daemon-reload
  systemctl enable --now failover-agent
  echo "failover-agent installed and started; logs: journalctl -u failover-agent -f"
else
  echo "failover-agent installed under $root"
fi
