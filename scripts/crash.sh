#!/usr/bin/env bash
# Kill -9 durability at many kill points: runs the crash test with more rounds
# (default 20) and prints, per round, the acks received and that none were lost.
#   scripts/crash.sh        # 20 rounds
#   scripts/crash.sh 50     # 50 rounds
set -euo pipefail
cd "$(dirname "$0")/.."
CRASH_ROUNDS=${1:-20} cargo test --test crash -- --nocapture
