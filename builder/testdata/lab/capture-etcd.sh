#!/bin/sh
# Regenerates the etcdctl fixtures of builder/src/lab/cluster.rs (Debian's etcd-server and
# etcd-client 3.4; k3s embeds etcd 3.5, whose `member list -w json` has the same shape):
#   etcd-members-3.json                   three started members on loopback
#   etcd-members-unstarted-learner.json   the same plus a learner added but not started (what a
#                                         joining k3s server is for a moment)
# Run as any user; everything lives in a temporary folder and is removed.
set -eu
export ETCDCTL_API=3
d=$(mktemp -d)
trap 'kill $pids 2>/dev/null; rm -rf "$d"' EXIT
cl="m1=http://127.0.0.1:23801,m2=http://127.0.0.1:23802,m3=http://127.0.0.1:23803"
pids=
for i in 1 2 3; do
  etcd --name m$i --data-dir "$d/m$i" \
    --listen-peer-urls http://127.0.0.1:2380$i --initial-advertise-peer-urls http://127.0.0.1:2380$i \
    --listen-client-urls http://127.0.0.1:2379$i --advertise-client-urls http://127.0.0.1:2379$i \
    --initial-cluster "$cl" --initial-cluster-state new --initial-cluster-token drill >"$d/m$i.log" 2>&1 &
  pids="$pids $!"
done
ep=http://127.0.0.1:23791
until etcdctl --endpoints $ep endpoint health >/dev/null 2>&1; do sleep 1; done
etcdctl --endpoints $ep member list -w json >etcd-members-3.json
# etcd refuses a member add until every member has been connected for 5 s.
sleep 8
etcdctl --endpoints $ep member add m4 --peer-urls=http://127.0.0.1:23804 --learner >/dev/null
etcdctl --endpoints $ep member list -w json >etcd-members-unstarted-learner.json
