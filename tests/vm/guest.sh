#!/bin/sh
# Runs inside the VM lane's guest, from berth-vm-tests.service (Type=exec,
# Delegate=yes), as the results share's copy: mounts the host's worktree
# read-only at the same path (the host-built test binaries name their
# berthd and shim by absolute path), runs each line of tests.list
# (`<name> <binary> <NAME=VALUE,... or -> <args>`), and
# writes `<name> <exit code> <seconds>` lines to results. The unit powers
# the machine off when this exits.
R=/mnt/results
. "$R/env"
say() { echo "$*" >/dev/console; }
mkdir -p "$REPO"
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 repo "$REPO"; then
  say "guest: cannot mount the repo share"; echo "mount 99 0" >>"$R/results"; exit 1
fi
say "== guest: kernel $(uname -r), /sys/fs/cgroup is $(stat -fc %T /sys/fs/cgroup), controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
say "== guest: runner in $(cat /proc/self/cgroup), up $(cut -d' ' -f1 /proc/uptime) s"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root BERTH_IN_VM=1 RUST_BACKTRACE=1
cd "$REPO"
while IFS=' ' read -r name bin envs args; do
  [ -n "$name" ] || continue
  [ "$envs" = - ] && envs=
  say "== guest: $name: $envs $bin $args"
  start=$(cut -d. -f1 /proc/uptime)
  # shellcheck disable=SC2086 # args are split on purpose
  { env $(echo "$envs" | tr , ' ') "$bin" $args 2>&1; echo $? >"/run/rc.$name"; } | tee "$R/$name.out" >/dev/console
  rc=$(cat "/run/rc.$name" 2>/dev/null || echo 98)
  end=$(cut -d. -f1 /proc/uptime)
  echo "$name $rc $((end - start))" >>"$R/results"
  say "== guest: $name: exit $rc in $((end - start)) s"
done <"$R/tests.list"
echo "$(cut -d' ' -f1 /proc/uptime)" >"$R/finished"
sync
