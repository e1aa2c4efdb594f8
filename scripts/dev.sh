#!/usr/bin/env bash
# Runs a local development server on the embedded store with debug logs.
#   scripts/dev.sh            # ws://127.0.0.1:8080/ws, data in ./data/dev.db
#   PORT=9000 scripts/dev.sh  # another port (binds 0.0.0.0, as on Heroku)
set -euo pipefail
cd "$(dirname "$0")/.."
export RUST_LOG=${RUST_LOG:-info,e2ee_chat=debug}
export CHAT__STORE__PATH=${CHAT__STORE__PATH:-data/dev.db}
exec cargo run --bin e2ee-chat-server "$@"
