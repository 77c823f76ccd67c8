#!/usr/bin/env bash
# `make fuzz`: builds every fuzz/fuzz_*.c as a libFuzzer binary with clang (ASan+UBSan) and
# runs each for SECONDS, growing its corpus under fuzz/corpus/<name>. New crashes are written
# to build/fuzz/crash-*; add a minimised reproducer to the corpus when you fix one.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${1:-60}"
OUT=build/fuzz
mkdir -p "$OUT/obj"
# Keep in step with PKGS in the Makefile.
PKGS="libmicrohttpd gnutls libplist-2.0 openssl sqlite3 libpq libcurl libnghttp2 jansson libsodium librhonabwy"
FLAGS="-std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer-no-link,address,undefined -Isrc -Ibuild/gen $(pkg-config --cflags $PKGS)"
make -s build/gen/web_assets.c >/dev/null 2>&1 || make -s all >/dev/null
objs=()
for src in $(find src -name '*.c' ! -path src/main.c) build/gen/web_assets.c; do
    obj="$OUT/obj/$(echo "$src" | tr '/' '_').o"
    [ "$obj" -nt "$src" ] || clang $FLAGS -c -o "$obj" "$src"
    objs+=("$obj")
done
for target in fuzz/fuzz_*.c; do
    name=$(basename "$target" .c); name=${name#fuzz_}
    clang $FLAGS -fsanitize=fuzzer -o "$OUT/fuzz_$name" "$target" "${objs[@]}" $(pkg-config --libs $PKGS) -lpthread
    # New inputs go to build/fuzz/corpus/<name>; the checked-in corpus is the seed.
    mkdir -p "fuzz/corpus/$name" "$OUT/corpus/$name"
    echo "== fuzz_$name for ${SECONDS_EACH}s"
    "$OUT/fuzz_$name" -max_total_time="$SECONDS_EACH" -artifact_prefix="$OUT/crash-$name-" \
        -max_len=65536 "$OUT/corpus/$name" "fuzz/corpus/$name" 2>&1 | tail -3
done
