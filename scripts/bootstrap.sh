#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (run as root, or with sudo
# available): installs only what is missing. Called by `make run` and `make test`.
set -euo pipefail

# Debian packages the build and the tests need, keyed by a file that proves
# each is installed.
declare -A NEED=(
  [cmake]=/usr/bin/cmake
  [libclang-dev]=/usr/lib/llvm-14/lib/libclang.so
  [clang]=/usr/bin/clang
  [pkg-config]=/usr/bin/pkg-config
  [sip-tester]=/usr/bin/sipp
  [baresip]=/usr/bin/baresip
  [kamailio]=/usr/sbin/kamailio
  [sox]=/usr/bin/sox
  [espeak-ng]=/usr/bin/espeak-ng
  [libespeak-ng-dev]=/usr/include/espeak-ng/speak_lib.h
  [libopus-dev]=/usr/include/opus/opus.h
  [python3-venv]=/usr/lib/python3/dist-packages/../../python3.11/venv/__init__.py
  [python3-pip]=/usr/bin/pip3
  [chromium]=/usr/bin/chromium
)

missing=()
for pkg in "${!NEED[@]}"; do
  if [ ! -e "${NEED[$pkg]}" ] && ! dpkg -s "$pkg" >/dev/null 2>&1; then
    missing+=("$pkg")
  fi
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "bootstrap: system packages present"
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    echo "bootstrap: add \$HOME/.cargo/bin to PATH" >&2
  else
    echo "bootstrap: installing Debian's cargo (a rustup toolchain is preferred)"
    $SUDO apt-get install -y -qq cargo >/dev/null
  fi
fi
