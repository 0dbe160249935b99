#!/bin/sh
# Builds the release `synchro` binary of the commit before the change feed,
# for the bench's `feed` section (full-sync ingest with and without the
# change sequence, run side by side in the same bench run).
#
#   crates/bench/before.sh [DIR]
#
# DIR (default: a new temporary folder) receives a detached `git worktree`
# of the commit in DIR/tree and its own cargo target folder in DIR/target,
# so that the build shares nothing with the current one. An existing
# DIR/tree at that commit is reused, and cargo only rebuilds what changed,
# so a second run costs seconds; the first one builds the whole dependency
# tree (several minutes on two cores). The binary's path is the last line
# on stdout; cargo's output goes to stderr.
#
# The bench runs this itself when it is given no `--before-binary PATH`
# (or SYNCHRO_BENCH_BEFORE_BIN), with DIR = <cargo target>/feed-before.
# To remove it afterwards: git worktree remove --force DIR/tree
#
# SYNCHRO_BENCH_BEFORE_COMMIT overrides the commit (default 944c37c, the
# parent of the change feed's commit 928c930).
set -eu

commit=${SYNCHRO_BENCH_BEFORE_COMMIT:-944c37c}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(git -C "$here" rev-parse --show-toplevel)
dir=${1:-$(mktemp -d "${TMPDIR:-/tmp}/synchro-before.XXXXXX")}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
tree=$dir/tree
want=$(git -C "$repo" rev-parse --verify "$commit^{commit}")

if [ -d "$tree" ] && [ "$(git -C "$tree" rev-parse HEAD 2>/dev/null)" = "$want" ]; then
    echo "before.sh: reusing $tree at $commit" >&2
else
    if [ -e "$tree" ]; then
        git -C "$repo" worktree remove --force "$tree" >&2 2>/dev/null || rm -rf "$tree"
        git -C "$repo" worktree prune >&2
    fi
    echo "before.sh: git worktree add $tree $commit" >&2
    git -C "$repo" worktree add --detach "$tree" "$want" >&2
fi

# The whole workspace, as `cargo build --release` builds the current binary:
# the same packages, hence the same features for every dependency.
echo "before.sh: cargo build --release --workspace (target $dir/target)" >&2
(
    cd "$tree"
    CARGO_TARGET_DIR="$dir/target" cargo build --release --locked --workspace >&2
)
bin=$dir/target/release/synchro
test -x "$bin"
echo "$bin"
