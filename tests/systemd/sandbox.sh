#!/usr/bin/env bash
# A Debian 12 machine with a real systemd as PID 1, booted with systemd-nspawn, for the
# package and service tests. Works on hosts whose own PID 1 is not systemd (CI VMs).
#
#   sandbox.sh up            boot a throw-away container (everything written inside is
#                            discarded at `down`); builds the cached rootfs first if needed
#   sandbox.sh run CMD...    run CMD inside (all namespaces, clean environment)
#   sandbox.sh push SRC DST  copy a host file into the container
#   sandbox.sh status | down | destroy (down + delete the cached rootfs)
#
# Layout: $CERTAGENT_SANDBOX (default /var/tmp/certagent-sandbox)/
#   rootfs/     debootstrapped bookworm with PACKAGES, kept between runs (about 1 minute to
#               build, about 400 MB); rebuilt when PACKAGES changes
#   upper/ work/ merged/   the overlay each boot runs on (rootfs below, upper emptied at `up`)
#   nspawn.pid, init.pid, console.log
#
# Things that are not obvious:
#  * Without systemd on the host nspawn cannot register the machine: --register=no and
#    --keep-unit are required, and machinectl / systemd-run -M / journalctl -M do not work.
#    Commands enter the container with nsenter; such a process is not in any unit (use
#    `run systemd-run --wait --pipe ...` when a unit environment matters).
#  * nspawn mounts a tmpfs on the container's /tmp: use `push`, not a copy into the rootfs.
#  * --private-network: the container has only loopback. Its nginx and certagent talk to
#    127.0.0.1 inside it; nothing listens on the host.
#  * If nspawn itself dies, the container's systemd lives on: `down` kills it by its
#    recorded pid (and start time), never by name.
#  * nspawn uses fixed cgroup names: one sandbox per host at a time. Callers serialize on
#    `flock /var/tmp/certagent-sandbox.lock` (container-test.sh does).
set -euo pipefail

DIR=${CERTAGENT_SANDBOX:-/var/tmp/certagent-sandbox}
MIRROR=${CERTAGENT_SANDBOX_MIRROR:-http://deb.debian.org/debian}
NAME=certagent-test
# debootstrap installs BASE (it cannot resolve virtual packages, which ansible-core's
# dependencies need); apt-get in the new root adds EXTRA.
BASE=systemd,dbus,procps
EXTRA="nginx openssl jq ansible-core python3-apt man-db"
PACKAGES="$BASE $EXTRA"
CPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ROOTFS=$DIR/rootfs
MERGED=$DIR/merged

say() { echo "sandbox: $*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"
case "$DIR" in /var/tmp/?*) ;; *) die "CERTAGENT_SANDBOX must be under /var/tmp (got $DIR)" ;; esac

host_tools() {
  local need=()
  command -v systemd-nspawn >/dev/null || need+=(systemd-container)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v nsenter >/dev/null || need+=(util-linux)
  [ ${#need[@]} -eq 0 ] && return 0
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}

# Unmount whatever is mounted below DIR (an interrupted debootstrap leaves /proc and /sys
# mounted in the new root), deepest first.
unmount_below() {
  local m
  for m in $(awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
}

rootfs() {
  if [ -f "$ROOTFS/.certagent-sandbox" ] && [ "$(cat "$ROOTFS/.certagent-sandbox")" = "$PACKAGES" ]; then
    return 0
  fi
  local t0=$SECONDS new=$DIR/rootfs.new
  unmount_below "$new"
  rm -rf --one-file-system "$new"
  mkdir -p "$DIR"
  say "building the rootfs (debootstrap bookworm: $PACKAGES); a minute or two"
  if ! debootstrap --variant=minbase --include="$BASE" bookworm "$new" "$MIRROR" >"$DIR/debootstrap.log" 2>&1; then
    tail -20 "$DIR/debootstrap.log" >&2
    die "debootstrap failed (log: $DIR/debootstrap.log)"
  fi
  # Nothing may start while installing into the new root.
  printf '#!/bin/sh\nexit 101\n' >"$new/usr/sbin/policy-rc.d"
  chmod 755 "$new/usr/sbin/policy-rc.d"
  # shellcheck disable=SC2086 # EXTRA is a list
  if ! chroot "$new" env -i PATH="$CPATH" DEBIAN_FRONTEND=noninteractive sh -c \
    "apt-get update -q && apt-get install -y -q --no-install-recommends $EXTRA" >>"$DIR/debootstrap.log" 2>&1; then
    tail -20 "$DIR/debootstrap.log" >&2
    die "installing $EXTRA into the rootfs failed (log: $DIR/debootstrap.log)"
  fi
  rm -f "$new/usr/sbin/policy-rc.d"
  echo "$NAME" >"$new/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 %s\n::1 localhost\n' "$NAME" >"$new/etc/hosts"
  ln -sf /dev/null "$new/etc/systemd/system/console-getty.service"
  # Debian's nginx listens on port 80 of its own loopback only; the tests add their site.
  mkdir -p "$new/var/log/journal"
  chroot "$new" apt-get clean
  echo "$PACKAGES" >"$new/.certagent-sandbox"
  rm -rf --one-file-system "$ROOTFS"
  mv "$new" "$ROOTFS"
  say "rootfs built in $((SECONDS - t0)) s ($(du -sh "$ROOTFS" | cut -f1))"
}

# The systemd-nspawn process we started, if it is still alive.
nspawn_pid() {
  local p
  p=$(cat "$DIR/nspawn.pid" 2>/dev/null) || return 1
  [ -n "$p" ] && tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q "^systemd-nspawn .*-D $MERGED " || return 1
  echo "$p"
}

start_time() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null; }

# The container's PID 1 (host pid): the child of nspawn that runs systemd in a new pid namespace.
container_init() {
  local np c
  np=$(nspawn_pid) || return 1
  for c in $(cat /proc/"$np"/task/*/children 2>/dev/null); do
    if [ "$(readlink "/proc/$c/ns/pid")" != "$(readlink /proc/self/ns/pid)" ] &&
      [ "$(cat "/proc/$c/comm" 2>/dev/null)" = systemd ]; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

# The init recorded at `up`, if that very process (same pid and start time) still runs.
recorded_init() {
  local p st
  [ -f "$DIR/init.pid" ] && read -r p st <"$DIR/init.pid" || return 1
  [ -n "$p" ] && [ "$(start_time "$p")" = "$st" ] || return 1
  echo "$p"
}

in_container() {
  nsenter -t "$1" -a -- env -i PATH="$CPATH" HOME=/root LANG=C.UTF-8 TERM=dumb \
    SYSTEMD_PAGER= SYSTEMD_COLORS=0 DEBIAN_FRONTEND=noninteractive "${@:2}"
}

up() {
  if nspawn_pid >/dev/null; then die "already running (nspawn pid $(nspawn_pid)); run: $0 down"; fi
  down quiet
  host_tools
  rootfs
  local t0=$EPOCHREALTIME
  # A fresh, empty upper layer: every run starts from the pristine rootfs.
  mkdir -p "$DIR/upper" "$DIR/work" "$MERGED"
  rm -rf --one-file-system "$DIR/upper" "$DIR/work"
  mkdir -p "$DIR/upper" "$DIR/work"
  mount -t overlay overlay -o "lowerdir=$ROOTFS,upperdir=$DIR/upper,workdir=$DIR/work" "$MERGED"
  rm -f "$DIR/nspawn.pid" "$DIR/init.pid"
  # In its own session, so it outlives the caller's process group; the shell writes its pid
  # and then becomes systemd-nspawn.
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$DIR/nspawn.pid" \
    systemd-nspawn -D "$MERGED" --boot --register=no --keep-unit --private-network \
    --console=passive --machine="$NAME" --hostname="$NAME" --timezone=off \
    </dev/null >"$DIR/console.log" 2>&1 &
  local i ip="" state=""
  for ((i = 0; i < 900; i++)); do
    if [ -s "$DIR/nspawn.pid" ] && ! nspawn_pid >/dev/null && [ $i -gt 20 ]; then
      tail -20 "$DIR/console.log" >&2
      die "systemd-nspawn exited during boot"
    fi
    if ip=$(container_init); then
      state=$(in_container "$ip" systemctl is-system-running 2>/dev/null || true)
      case "$state" in running | degraded) break ;; esac
    fi
    sleep 0.1
  done
  case "$state" in
    running | degraded) ;;
    *) tail -20 "$DIR/console.log" >&2; die "the container did not boot in 90 s (state: ${state:-none})" ;;
  esac
  echo "$ip $(start_time "$ip")" >"$DIR/init.pid"
  if [ "$state" = degraded ]; then in_container "$ip" systemctl --failed --no-legend >&2 || true; fi
  say "booted ($state) in $(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $t0 }") s: nspawn pid $(nspawn_pid), container init pid $ip"
}

down() {
  local quiet=${1:-} np ip i
  if np=$(nspawn_pid); then
    kill -TERM "$np" # nspawn turns SIGTERM into an orderly shutdown of the container
    for ((i = 0; i < 300; i++)); do [ -e "/proc/$np" ] || break; sleep 0.1; done
    if [ -e "/proc/$np" ]; then say "nspawn pid $np still alive after 30 s: SIGKILL"; kill -KILL "$np" || true; fi
  fi
  if ip=$(recorded_init); then
    say "killing the container's init (pid $ip), left behind by a dead nspawn"
    kill -KILL "$ip" || true # the end of a pid namespace's init ends every process in it
    for ((i = 0; i < 100; i++)); do recorded_init >/dev/null || break; sleep 0.1; done
  fi
  rm -f "$DIR/nspawn.pid" "$DIR/init.pid"
  if mountpoint -q "$MERGED" 2>/dev/null; then
    umount "$MERGED" 2>/dev/null || umount -l "$MERGED"
  fi
  rm -rf --one-file-system "$DIR/upper" "$DIR/work"
  # What nspawn cannot clean up without a host systemd (all empty; rmdir refuses otherwise).
  rmdir "/run/systemd/nspawn/propagate/$NAME" 2>/dev/null || true
  local h
  for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do
    [ -d "$h/payload" ] && find "$h/payload" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    rmdir "$h/supervisor" 2>/dev/null || true
  done
  [ -n "$quiet" ] || say "stopped"
}

run() {
  local ip
  ip=$(container_init) || die "the container is not running (run: $0 up)"
  in_container "$ip" "$@"
}

push() {
  [ $# -eq 2 ] || die "usage: push HOSTFILE CONTAINERPATH"
  local ip
  ip=$(container_init) || die "the container is not running (run: $0 up)"
  in_container "$ip" sh -c 'mkdir -p "$(dirname "$1")" && cat >"$1"' sh "$2" <"$1"
}

cmd=${1:-}
shift || true
case "$cmd" in
  up) up ;;
  down) down ;;
  run) [ $# -gt 0 ] || die "usage: run CMD..."; run "$@" ;;
  push) push "$@" ;;
  rootfs) host_tools; rootfs ;;
  status)
    if np=$(nspawn_pid); then echo "running: nspawn pid $np, init pid $(container_init || echo '?')"
    elif ip=$(recorded_init); then echo "orphaned container init pid $ip (run: $0 down)"; exit 3
    else echo "not running"; exit 3; fi ;;
  destroy) down; unmount_below "$DIR/rootfs.new"; rm -rf --one-file-system "$ROOTFS" "$DIR/rootfs.new"; say "removed $ROOTFS" ;;
  *) sed -n '2,10p' "$0" >&2; exit 2 ;;
esac
