#!/usr/bin/env bash
# tests/browser/setup.sh — prepares the real-browser tests: Debian's Chromium
# (/usr/bin/chromium) and playwright-core from package-lock.json. Idempotent:
# apt runs only when chromium is missing, `npm ci` only when node_modules is
# not at the locked version. Called by .ci/run; touches nothing else.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v chromium >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y chromium
fi

want=$(node -p "require('./package-lock.json').packages['node_modules/playwright-core'].version")
have=$(node -p "try { require('./node_modules/playwright-core/package.json').version } catch { '' }")
if [ "$want" != "$have" ]; then
  npm ci --no-audit --no-fund
fi

echo "browser tests ready: $(chromium --version 2>/dev/null || echo chromium), playwright-core $want"
