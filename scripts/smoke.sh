#!/usr/bin/env bash
# A one-minute end-to-end check of any running server with the terminal
# client: two fresh users, a room, a message each way, history for both.
#   scripts/smoke.sh ws://127.0.0.1:8080/ws
#   scripts/smoke.sh wss://chat.example.org/ws
set -euo pipefail
url=${1:?usage: scripts/smoke.sh WS_URL}
cd "$(dirname "$0")/.."
cargo build --release --bin e2ee-chat >/dev/null
cli=target/release/e2ee-chat
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
run=$(date +%s)$RANDOM
a="sa$run"; b="sb$run"; room="smoke $run"
unset E2EE_CHAT_PASSPHRASE
step() { echo "== $*"; }
step "keys and registration for $a and $b"
"$cli" --profile "$tmp/a" --server "$url" keygen --user "$a" >/dev/null
"$cli" --profile "$tmp/b" --server "$url" keygen --user "$b" >/dev/null
"$cli" --profile "$tmp/a" register
"$cli" --profile "$tmp/b" register
step "room"
"$cli" --profile "$tmp/a" create "$room"
"$cli" --profile "$tmp/b" join "$room"
step "messages"
"$cli" --profile "$tmp/a" send "$room" "ping from $a"
"$cli" --profile "$tmp/b" send "$room" "pong from $b"
for who in a b; do
  out=$("$cli" --profile "$tmp/$who" history "$room")
  echo "$out"
  grep -q "$a: ping from $a" <<<"$out" && grep -q "$b: pong from $b" <<<"$out" || { echo "FAIL: $who cannot read both messages"; exit 1; }
done
"$cli" --profile "$tmp/a" leave "$room"
"$cli" --profile "$tmp/b" leave "$room"
echo "smoke: ok"
