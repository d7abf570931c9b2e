#!/usr/bin/env bash
# Check the flake as far as a machine without the Nix binary cache can: parse it, check
# the lock pins the agreed nixpkgs, and evaluate every output for every system against a
# stand-in nixpkgs (nix/stub-nixpkgs), instantiating derivations without building them.
set -euo pipefail
cd "$(dirname "$0")/.."
export NIX_CONFIG="experimental-features = nix-command flakes"
stub="path:$PWD/nix/stub-nixpkgs"

nix-instantiate --parse flake.nix >/dev/null
echo "flake.nix parses"

python3 - <<'PY'
import json, sys
lock = json.load(open("flake.lock"))
n = lock["nodes"]["nixpkgs"]
want = {
    "version": (lock["version"], 7),
    "root inputs": (lock["nodes"][lock["root"]]["inputs"], {"nixpkgs": "nixpkgs"}),
    "rev": (n["locked"]["rev"], "8fd9daa3db09ced9700431c5b7ad0e8ba199b575"),
    "narHash": (n["locked"]["narHash"], "sha256-Ti+ZBvW6yrWWAg2szExVTwCd4qOJ3KlVr1tFHfyfi8Q="),
    "lastModified": (n["locked"]["lastModified"], 1778430510),
    "ref": (n["original"]["ref"], "nixos-25.11"),
}
bad = [f"{k}: {got!r} != {exp!r}" for k, (got, exp) in want.items() if got != exp]
if bad:
    sys.exit("flake.lock: " + "; ".join(bad))
print("flake.lock pins nixos-25.11 at 8fd9daa")
PY

nix flake check --no-build --override-input nixpkgs "$stub" 2>&1 | grep -v -e 'not writing modified lock file' -e '^• Updated input' -e "^    '" -e '^  → ' -e 'Git tree .* is dirty' || true
# flake check's exit status is what counts; run it again for the status alone.
nix flake check --no-build --override-input nixpkgs "$stub" 2>/dev/null

tools="moat moat-launch moat-grant moat-proxy moat-audit moat-sshd-filter"
for sys in x86_64-linux aarch64-linux x86_64-darwin aarch64-darwin; do
  ev() { nix eval --raw --override-input nixpkgs "$stub" "$@" 2>/dev/null; }
  for t in default $tools; do
    ev ".#packages.$sys.$t.drvPath" >/dev/null
    prog=$(ev ".#apps.$sys.$t.program")
    case "$prog" in
      /nix/store/*/bin/moat*) ;;
      *) echo "apps.$sys.$t.program is '$prog'" >&2; exit 1 ;;
    esac
  done
  for t in $tools; do
    [ "$(ev ".#packages.$sys.$t.meta.mainProgram")" = "$t" ]
  done
  ev ".#devShells.$sys.default.drvPath" >/dev/null
  for c in build tests clippy fmt; do ev ".#checks.$sys.$c.drvPath" >/dev/null; done
  echo "$sys: packages, apps, devShells and checks evaluate"
done
