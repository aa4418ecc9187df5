#!/bin/sh
# Example hook: the agent runs it on every role change of this node in a
# group. Replace the echo lines with what your service needs, e.g.
#   primary)   systemctl start recorder ;;
#   secondary) systemctl stop recorder ;;   (or: keep it warm, see FAILOVER_STANDBY_MODE)
#   fenced)    systemctl stop recorder ;;
# Pass FAILOVER_EPOCH to whatever your service writes to, so that storage can
# refuse writes from an older primary (a fencing token).
# With a [[sync]] for the group, FAILOVER_SYNC_STATE says how this node's
# copy stands (fresh, stale, none): a service may refuse to start on none.
# Exit 0 on success; any other status is reported to the coordinator.
set -eu
echo "group=$FAILOVER_GROUP node=$FAILOVER_NODE role=$FAILOVER_ROLE" \
     "previous=$FAILOVER_PREVIOUS_ROLE epoch=$FAILOVER_EPOCH" \
     "primary=${FAILOVER_PRIMARY:-none} standby=$FAILOVER_STANDBY_MODE" \
     "sync=${FAILOVER_SYNC_STATE:-unset}"
case "$FAILOVER_ROLE" in
  primary)   echo "this node now serves $FAILOVER_GROUP" ;;
  secondary) echo "this node stands by ($FAILOVER_STANDBY_MODE) for $FAILOVER_GROUP" ;;
  fenced)    echo "lease lost: this node must stop serving $FAILOVER_GROUP now" ;;
esac
