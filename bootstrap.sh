#!/usr/bin/env bash
# Sets up llm-homelab on a fresh Debian/Ubuntu machine (or a Mac with Python 3.11+): system packages
# where it can install them, a virtual environment in .venv, the project with its engines.
#   bash bootstrap.sh          # users: the project and its inference engines
#   bash bootstrap.sh --dev    # contributors and CI: plus test and lint tools, sshd and Claude Code
#                                for the tests
set -euo pipefail
cd "$(dirname "$0")"

extras="server"
apt_packages=(git haproxy)  # haproxy: the engine `inv gateway.start` runs
[[ "$(uname -s)" != "Darwin" ]] && apt_packages+=(cmake g++)  # llama.cpp builds
dev=false
if [[ "${1:-}" == "--dev" ]]; then
  dev=true
  extras="server,mlx,dev"
  apt_packages+=(openssh-server openssh-client)
  # The dashboard's browser tests (tests/e2e/test_dashboard.py): Selenium drives Debian's Chromium.
  apt_packages+=(chromium chromium-driver)
  # npm installs Claude Code; a machine with its own Node (nodesource, nvm) keeps it
  command -v npm >/dev/null 2>&1 || apt_packages+=(nodejs npm)
fi
[[ "$(uname -s)" == "Darwin" ]] && extras="${extras},mlx"

if command -v apt-get >/dev/null 2>&1; then
  missing=()
  for pkg in "${apt_packages[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if ((${#missing[@]})); then
    sudo_cmd=""; [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
    echo "==> apt-get install ${missing[*]}"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

python=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || { echo "==> creating .venv"; "$python" -m venv .venv; }
.venv/bin/python -m pip install -q --upgrade pip

# llama.cpp built without native CPU tuning: a native build on VMs whose CPU reports AMX segfaults on
# the first decode (ggml_backend_amx_mul_mat), and the portable AVX2 build measured faster anyway.
# Apple Silicon keeps the default build (Metal). Both with the RPC backend (GGML_RPC), so a model can
# be split across hosts (inv server.start --rpc): rebuilt when the installed one lacks it.
llama_cpp_version=0.3.36
cpu_flags=""
[[ "$(uname -s)" != "Darwin" ]] && cpu_flags="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
export CMAKE_ARGS="${CMAKE_ARGS:-$cpu_flags} -DGGML_RPC=ON"
# Both builds are kept in the user's cache, keyed by version and flags, so another checkout or a new
# .venv on this machine installs them in seconds; each lands there whole (built aside, then moved).
build_key=$(.venv/bin/python -c 'import hashlib, sys; print(hashlib.sha256(sys.argv[1].encode()).hexdigest()[:12])' "$CMAKE_ARGS")
build_cache="${XDG_CACHE_HOME:-$HOME/.cache}/llm-homelab/build/llama.cpp-$llama_cpp_version-$build_key"
if ! .venv/bin/python - 2>/dev/null <<'PY'
import ctypes, sys
import llama_cpp
from llama_cpp import llama_cpp as binding
find = binding._lib.ggml_backend_reg_by_name
find.restype, find.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
sys.exit("AMX" in llama_cpp.llama_print_system_info().decode() or not find(b"RPC"))
PY
then
  if ! compgen -G "$build_cache/wheel/*.whl" >/dev/null; then
    echo "==> building llama-cpp-python $llama_cpp_version (portable build with RPC; a few minutes)"
    rm -rf "$build_cache/wheel.partial" && mkdir -p "$build_cache"
    .venv/bin/python -m pip wheel -q --no-cache-dir --no-deps "llama-cpp-python==$llama_cpp_version" \
      -w "$build_cache/wheel.partial"
    mv "$build_cache/wheel.partial" "$build_cache/wheel"
  fi
  echo "==> installing llama-cpp-python $llama_cpp_version (built in $build_cache)"
  .venv/bin/python -m pip install -q --force-reinstall --no-deps "$build_cache"/wheel/*.whl
fi

# rpc-server from the very llama.cpp that llama-cpp-python vendors (its sdist carries it), so every
# host speaks the same RPC protocol version; only its target is built (ggml, the CPU backend, RPC).
rpc_server=.tools/llama.cpp-$llama_cpp_version/bin/rpc-server
if [[ ! -x "$build_cache/bin/rpc-server" ]] && command -v cmake >/dev/null 2>&1; then
  echo "==> building rpc-server from llama-cpp-python $llama_cpp_version's llama.cpp"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  .venv/bin/python -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$llama_cpp_version" -d "$work"
  tar -xzf "$work/llama_cpp_python-$llama_cpp_version.tar.gz" -C "$work"
  # shellcheck disable=SC2086  # CMAKE_ARGS is a list of flags
  cmake -S "$work/llama_cpp_python-$llama_cpp_version/vendor/llama.cpp" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF $CMAKE_ARGS >/dev/null
  cmake --build "$work/build" --target ggml-rpc-server -j "$(getconf _NPROCESSORS_ONLN)" >/dev/null
  install -D -m 755 "$work/build/bin/ggml-rpc-server" "$build_cache/bin/rpc-server.partial"
  mv "$build_cache/bin/rpc-server.partial" "$build_cache/bin/rpc-server"
fi
if [[ -x "$build_cache/bin/rpc-server" ]] && ! cmp -s "$build_cache/bin/rpc-server" "$rpc_server"; then
  install -D -m 755 "$build_cache/bin/rpc-server" "$rpc_server"
fi

echo "==> installing llm-homelab[$extras]"
.venv/bin/python -m pip install -q -e ".[$extras]"

# The e2e tests run the real Claude Code, pinned (tests/fixtures/claude_code/ holds what this version
# sends). Its npm package ships a native binary in a per-platform optional dependency, so the Node
# that runs npm may be older than the package's `engines` asks for. tasks/core/claude_code.py finds it
# here before PATH.
claude_code_version=2.1.330
claude_code_dir=.tools/claude-code
if $dev && ! "$claude_code_dir/node_modules/.bin/claude" --version 2>/dev/null | grep -qx "$claude_code_version (Claude Code)"; then
  echo "==> installing Claude Code $claude_code_version into $claude_code_dir"
  mkdir -p "$claude_code_dir"
  npm install --prefix "$claude_code_dir" --save-exact --no-audit --no-fund --loglevel=error \
    "@anthropic-ai/claude-code@$claude_code_version"
  "$claude_code_dir/node_modules/.bin/claude" --version >/dev/null
fi
echo "==> ready: .venv/bin/inv -l"
