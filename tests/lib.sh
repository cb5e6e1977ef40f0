# Shared by the CLI and fault scripts (sourced after LLMQ is set): a temporary directory $T
# removed at exit, ok/bad reporting with a failure count, and L = llmq on one thread.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fails=$((fails+1)); }
L() { timeout 300 "$LLMQ" --threads 1 "$@"; }
