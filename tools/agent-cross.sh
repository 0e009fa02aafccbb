#!/usr/bin/env bash
# Builds the endpoint agent for the supported targets, installing the Rust
# targets and C cross toolchains it needs (the agent's crypto, aws-lc,
# compiles C for the target). Prints a table of what linked and what could
# only be checked.
set -uo pipefail
cd "$(dirname "$0")/.."
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

apt_install() {
  if ! dpkg -s "$@" >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq "$@") >/dev/null 2>&1 || echo "warning: could not install $*" >&2
  fi
}

results=()
build() { # target, mode (build|check), extra env...
  local target=$1 mode=$2; shift 2
  rustup target add "$target" >/dev/null 2>&1 || { results+=("| $target | not built | rustup could not install the target |"); return; }
  local log; log=$(mktemp)
  if env "$@" cargo "$mode" --profile agent -p oneprotect-agent --target "$target" >"$log" 2>&1; then
    if [ "$mode" = build ]; then
      local bin="$target_dir/$target/agent/oneprotect-agent"; [ -f "$bin.exe" ] && bin="$bin.exe"
      results+=("| $target | linked | $(stat -c %s "$bin" | awk '{printf "%.2f MB", $1/1e6}') |")
    else
      results+=("| $target | checked (no link) | $3 |")
    fi
  else
    results+=("| $target | failed | $(grep -m1 -E '^error' "$log" | cut -c1-100) |")
  fi
  rm -f "$log"
}

apt_install musl-tools
build x86_64-unknown-linux-musl build CC_x86_64_unknown_linux_musl=musl-gcc

apt_install gcc-aarch64-linux-gnu
build aarch64-unknown-linux-gnu build CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc

apt_install gcc-mingw-w64-x86-64 nasm
build x86_64-pc-windows-gnu build CC_x86_64_pc_windows_gnu=x86_64-w64-mingw32-gcc CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc

# macOS: no Apple SDK can be installed here, so zig (from PyPI) provides
# the C compiler and libSystem stubs through cargo-zigbuild.
if python3 -m pip install --quiet ziglang >/dev/null 2>&1 && { command -v cargo-zigbuild >/dev/null || cargo install --locked --quiet cargo-zigbuild >/dev/null 2>&1; }; then
  rustup target add aarch64-apple-darwin >/dev/null 2>&1
  log=$(mktemp)
  if cargo zigbuild --profile agent -p oneprotect-agent --target aarch64-apple-darwin >"$log" 2>&1; then
    results+=("| aarch64-apple-darwin | linked (zig) | $(stat -c %s "$target_dir/aarch64-apple-darwin/agent/oneprotect-agent" | awk '{printf "%.2f MB", $1/1e6}') |")
  elif grep -q "error: linking with" "$log"; then
    # Everything compiled for the target; only the final link needs Apple's
    # SDK frameworks, which cannot be installed here.
    results+=("| aarch64-apple-darwin | compiled, not linked | the link needs the Apple SDK frameworks (build on macOS) |")
  else
    results+=("| aarch64-apple-darwin | failed (zig) | $(grep -m1 -E '^error' "$log" | cut -c1-100) |")
  fi
  rm -f "$log"
else
  results+=("| aarch64-apple-darwin | not built | zig or cargo-zigbuild unavailable |")
fi

echo "| target | result | size or reason |"
echo "| --- | --- | --- |"
printf '%s\n' "${results[@]}"
