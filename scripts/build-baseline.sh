#!/usr/bin/env bash
# Builds a release chat-server of git revision REV, for chat-bench --baseline-server, and
# prints the binary's path on standard output (progress goes to standard error).
#
#   scripts/build-baseline.sh main
#   target/release/chat-bench suite --baseline-server "$(scripts/build-baseline.sh main)"
#
# The revision is checked out in a git worktree of its own under /tmp and built into its
# own target directory there, so neither this tree nor its target/ is touched and nothing
# is committed. A second call for the same commit reuses the build.
set -euo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: $0 REV   (a branch, tag or commit; prints the path of its chat-server)" >&2
  exit 2
fi
rev=$1
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
commit=$(git -C "$repo" rev-parse --verify --quiet "$rev^{commit}") || {
  echo "$0: $rev is not a revision of $repo" >&2
  exit 2
}
short=${commit:0:12}
base=${CHAT_BASELINE_DIR:-/tmp/chat-baseline}
tree=$base/$short
bin=$tree/target/release/chat-server

if [ ! -x "$bin" ]; then
  mkdir -p "$base"
  if [ ! -d "$tree/.git" ] && [ ! -f "$tree/.git" ]; then
    # A worktree left behind by an earlier, interrupted call is pruned first.
    git -C "$repo" worktree prune
    echo "checking out $rev ($short) in $tree" >&2
    git -C "$repo" worktree add --detach --force "$tree" "$commit" >&2
  fi
  echo "building chat-server of $short (release)" >&2
  CARGO_TARGET_DIR="$tree/target" cargo build --release --locked \
    --manifest-path "$tree/Cargo.toml" -p chat-server >&2
fi
echo "$bin"
