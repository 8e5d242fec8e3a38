#!/usr/bin/env bash
# Three nodes on one machine (loopback), joined through a seed, no mDNS.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup
d=$(mktemp -d)
secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
for i in 1 2 3; do
  .venv/bin/swarmd --name n$i --data-dir "$d/n$i" --listen /ip4/127.0.0.1/tcp/410$i \
    --api-listen 127.0.0.1:818$i --socket "$d/n$i.sock" --no-mdns --profile local \
    --seed 127.0.0.1:4101 --config <(printf '[p2p]\nsecret = "%s"\n' "$secret") &
done
sleep 3
.venv/bin/swarmctl --socket "$d/n3.sock" status
kill %1 %2 %3; wait
