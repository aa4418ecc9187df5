#!/bin/sh
# Installs the failover agent on this node: the binary, a configuration
# (kept if one exists), and the systemd unit, then starts it.
#
#   sudo deploy/install-agent.sh --node-id rec-1 --coordinator http://coord:7400 \
#        [--binary target/release/failover-agent] [--hook /path/to/hook.sh]
#
# --root DIR installs under DIR instead of / and does not touch systemd
# (for packaging, and for the project's own tests).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
binary="$here/../target/release/failover-agent"
root=""
node_id=""
coordinator="http://127.0.0.1:7400"
hook=""

usage() { echo "usage: $0 --node-id ID [--coordinator URL] [--binary PATH] [--hook CMD] [--root DIR]" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --node-id) node_id="${2:?}"; shift 2 ;;
    --coordinator) coordinator="${2:?}"; shift 2 ;;
    --binary) binary="${2:?}"; shift 2 ;;
    --hook) hook="${2:?}"; shift 2 ;;
    --root) root="${2:?}"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "unknown option: $1" >&2; usage ;;
  esac
done
[ -n "$node_id" ] || { echo "error: --node-id is required" >&2; usage; }
[ -x "$binary" ] || { echo "error: no agent binary at $binary (cargo build --release -p agent)" >&2; exit 1; }

install -d "$root/usr/local/bin" "$root/etc/failover" "$root/etc/systemd/system"
install -m 0755 "$binary" "$root/usr/local/bin/failover-agent"

config="$root/etc/failover/agent.toml"
if [ -f "$config" ]; then
  echo "keeping existing $config"
else
  {
    echo "node_id = \"$node_id\""
    echo "coordinator = \"$coordinator\""
    echo
    echo "[hooks]"
    if [ -n "$hook" ]; then echo "on_role_change = \"$hook\""; fi
    echo "timeout = \"30s\""
  } > "$config"
  chmod 0644 "$config"
fi
"$root/usr/local/bin/failover-agent" --config "$config" --check-config > /dev/null

install -m 0644 "$here/systemd/failover-agent.service" "$root/etc/systemd/system/failover-agent.service"

if [ -z "$root" ]; then
  systemctl daemon-reload
  systemctl enable --now failover-agent
  echo "failover-agent installed and started; logs: journalctl -u failover-agent -f"
else
  echo "failover-agent installed under $root"
fi
