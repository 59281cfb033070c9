#!/usr/bin/env bash
# Installs the deploy tests' npm packages (package-lock.json, exact versions) into
# tests/deploy/node_modules; skipped when they are already installed at those versions.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"
command -v npm >/dev/null || { echo "npm-ci: npm not found (scripts/setup-deps installs it)" >&2; exit 1; }
# npm records what it installed in node_modules/.package-lock.json; equal dependency
# trees mean nothing to do.
if [[ -f node_modules/.package-lock.json ]] &&
    node -e '
        const fs = require("fs");
        const want = JSON.parse(fs.readFileSync("package-lock.json")).packages;
        const have = JSON.parse(fs.readFileSync("node_modules/.package-lock.json")).packages;
        const v = (p) => Object.fromEntries(Object.entries(p).filter(([k]) => k).map(([k, x]) => [k, x.version]));
        process.exit(JSON.stringify(v(want)) === JSON.stringify(v(have)) ? 0 : 1);'; then
    echo "npm-ci: node_modules up to date"
    exit 0
fi
npm ci --no-audit --no-fund
