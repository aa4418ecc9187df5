#!/bin/sh
# Installs the failover agent on this node: the binary, a configuration
# (kept if one exists for the same node id), a hook, and the systemd unit,
# then starts it.
#
#   sudo deploy/install-agent.sh --node-id rec-1 --coordinator http://coord:7400 \
#        [--binary target/release/failover-agent] [--hook /path/to/hook.sh] \
#        [--tls-ca ca.pem --tls-cert node-rec-1.pem --tls-key node-rec-1-key.pem] [--force]
#
# --hook PATH: the hook the agent runs on every role change. If no file is
#   there yet, the example hook (it only logs) is installed at PATH for you
#   to edit.
# --tls-ca/--tls-cert/--tls-key: the CA that signed the coordinator's
#   certificate, and this node's certificate and key (naming
#   urn:failover:node:ID); copied to /etc/failover/tls/ (the key readable by
#   root only). Needed for an https:// coordinator.
# --force: replace an existing configuration (kept as agent.toml.bak) —
#   needed when it was written for another node id, or to change the
#   coordinator URL, hook or certificates of an installed agent (without it,
#   giving a different one is refused).
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
coordinator_given=0
hook=""
tls_ca=""
tls_cert=""
tls_key=""
force=0

usage() { echo "usage: $0 --node-id ID [--coordinator URL] [--binary PATH] [--hook PATH] [--tls-ca FILE --tls-cert FILE --tls-key FILE] [--force] [--root DIR]" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --node-id) node_id="${2:?}"; shift 2 ;;
    --coordinator) coordinator="${2:?}"; coordinator_given=1; shift 2 ;;
    --binary) binary="${2:?}"; shift 2 ;;
    --hook) hook="${2:?}"; shift 2 ;;
    --tls-ca) tls_ca="${2:?}"; shift 2 ;;
    --tls-cert) tls_cert="${2:?}"; shift 2 ;;
    --tls-key) tls_key="${2:?}"; shift 2 ;;
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

if [ -n "$tls_cert$tls_key" ] && { [ -z "$tls_cert" ] || [ -z "$tls_key" ]; }; then
  echo "error: --tls-cert and --tls-key go together" >&2; exit 2
fi
for f in "$tls_ca" "$tls_cert" "$tls_key"; do
  if [ -n "$f" ] && [ ! -r "$f" ]; then echo "error: cannot read $f" >&2; exit 1; fi
done

config="$root/etc/failover/agent.toml"
state_dir="/var/lib/failover-agent"
tls_dir="/etc/failover/tls"

# $1 made safe as the replacement of a sed s||| command.
sed_escape() { printf '%s' "$1" | sed -e 's/[\\&|]/\\&/g'; }

# The value of `key = "..."` in a TOML file (first match), or nothing.
toml_value() {
  sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*[\"']\([^\"']*\)[\"'].*/\1/p" "$2" | head -n 1
}

# An existing configuration for another node id is a mistake to stop at:
# two machines with one node id are duplicates the coordinator refuses.
keep=0
if [ -f "$config" ]; then
  existing=$(toml_value node_id "$config")
  if [ "$existing" = "$node_id" ] && [ "$force" = 0 ]; then
    keep=1
    # Keeping it must not silently drop what was asked for.
    kept_coordinator=$(toml_value coordinator "$config")
    kept_hook=$(toml_value on_role_change "$config")
    if [ "$coordinator_given" = 1 ] && [ "$kept_coordinator" != "$coordinator" ]; then
      echo "error: $config already names coordinator $kept_coordinator, not $coordinator: run with --force to replace it; nothing was changed" >&2
      exit 1
    fi
    if [ -n "$hook" ] && [ "$kept_hook" != "$hook" ]; then
      echo "error: $config already names hook '$kept_hook', not $hook: run with --force to replace it; nothing was changed" >&2
      exit 1
    fi
    # The same certificates again are fine; different ones need --force.
    same=1
    if [ -n "$tls_ca$tls_cert" ] && ! grep -q '^[[:space:]]*\[tls\]' "$config"; then same=0; fi
    if [ -n "$tls_ca" ] && ! cmp -s "$tls_ca" "$root$tls_dir/ca.pem"; then same=0; fi
    if [ -n "$tls_cert" ] && ! cmp -s "$tls_cert" "$root$tls_dir/node.pem"; then same=0; fi
    if [ -n "$tls_key" ] && ! cmp -s "$tls_key" "$root$tls_dir/node-key.pem"; then same=0; fi
    if [ "$same" = 0 ]; then
      echo "error: $config exists with other certificates: run with --force to install these; nothing was changed" >&2
      exit 1
    fi
  elif [ "$force" = 0 ]; then
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
  if [ -n "$tls_ca$tls_cert" ]; then
    echo
    echo "[tls]"
    if [ -n "$tls_ca" ]; then echo "ca = \"$tls_dir/ca.pem\""; fi
    if [ -n "$tls_cert" ]; then
      echo "cert = \"$tls_dir/node.pem\""
      echo "key = \"$tls_dir/node-key.pem\""
    fi
  fi
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
  sed -e "s|^state_dir = .*|state_dir = \"$(sed_escape "$work/state")\"|" \
      -e "s|^on_role_change = .*|on_role_change = \"$(sed_escape "$check_hook")\"|" \
      -e "s|^ca = .*|ca = \"$(sed_escape "$tls_ca")\"|" \
      -e "s|^cert = .*|cert = \"$(sed_escape "$tls_cert")\"|" \
      -e "s|^key = .*|key = \"$(sed_escape "$tls_key")\"|" "$new_config" > "$work/check.toml"
  if ! "$binary" --config "$work/check.toml" --check-config > /dev/null; then
    echo "error: the new configuration was refused; nothing was changed" >&2
    exit 1
  fi
elif [ -z "$root" ]; then
  # The kept configuration must still suit the new binary.
  if ! "$binary" --config "$config" --check-config > /dev/null; then
    echo "error: the new agent refuses the existing $config (see above): fix it or run with --force; nothing was changed" >&2
    exit 1
  fi
fi

if [ "$keep" = 0 ] && [ -f "$config" ]; then
  echo "replacing $config written for node id '$existing' (kept as $config.bak)"
fi

install -d "$root/usr/local/bin" "$root/etc/failover" "$root/etc/systemd/system" "$root$state_dir"
install -m 0755 "$binary" "$root/usr/local/bin/failover-agent"
if [ "$keep" = 0 ] && [ -n "$tls_ca$tls_cert" ]; then
  install -d -m 0755 "$root$tls_dir"
  if [ -n "$tls_ca" ]; then install -m 0644 "$tls_ca" "$root$tls_dir/ca.pem"; fi
  if [ -n "$tls_cert" ]; then
    install -m 0644 "$tls_cert" "$root$tls_dir/node.pem"
    install -m 0600 "$tls_key" "$root$tls_dir/node-key.pem"
  fi
fi

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
  if systemctl is-active --quiet failover-agent; then
    systemctl enable failover-agent
    echo "failover-agent installed; the running agent keeps the old binary and configuration until you run: systemctl restart failover-agent (a primary steps down then, unless its group has a shutdown_grace)"
  else
    systemctl enable --now failover-agent
    echo "failover-agent installed and started; logs: journalctl -u failover-agent -f"
  fi
else
  echo "failover-agent installed under $root"
fi
