#!/bin/sh
# Install the agent CLIs the end-to-end tests run, at the versions pinned here (the one
# place they are pinned), into DIR (default: $CARGO_TARGET_DIR or ./target, then
# /agent-clis). Safe to run concurrently (flock) and cheap when already installed.
# Prints DIR on success. Needs npm and network access to the npm registry.
set -eu

CLAUDE_CODE_VERSION=2.1.330   # @anthropic-ai/claude-code (native binary via optional deps)
CODEX_VERSION=0.169.0         # @openai/codex (native binary via optional deps)
GEMINI_CLI_VERSION=0.61.0     # @google/gemini-cli (node >= 20)

dir=${1:-${CARGO_TARGET_DIR:-target}/agent-clis}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
stamp="$dir/.installed-claude-$CLAUDE_CODE_VERSION-codex-$CODEX_VERSION-gemini-$GEMINI_CLI_VERSION"

exec 9>"$dir/.lock"
flock -w 900 9 || { echo "install-agent-clis: timed out waiting for $dir/.lock" >&2; exit 75; }

if [ ! -f "$stamp" ]; then
    command -v npm >/dev/null || { echo "install-agent-clis: npm not found" >&2; exit 69; }
    rm -f "$dir"/.installed-*
    npm install --prefix "$dir" --no-audit --no-fund --loglevel=error \
        "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" \
        "@openai/codex@$CODEX_VERSION" \
        "@google/gemini-cli@$GEMINI_CLI_VERSION" >&2
    for b in claude codex gemini; do
        [ -x "$dir/node_modules/.bin/$b" ] || { echo "install-agent-clis: $b missing after npm install" >&2; exit 70; }
    done
    # Claude Code's postinstall replaces a stub with the platform's native binary.
    "$dir/node_modules/.bin/claude" --version >/dev/null ||
        { echo "install-agent-clis: claude does not run (postinstall skipped?)" >&2; exit 70; }
    touch "$stamp"
fi
echo "$dir"
