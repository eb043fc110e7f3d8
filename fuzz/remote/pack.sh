#!/usr/bin/env bash
# Makes .fuzzbin/ at the repository root (ignored by git): the four fuzz binaries as
# `cargo +nightly-2026-05-20 fuzz build -s none` left them, stripped; the libstdc++ and libgcc_s
# they were linked against, for a machine without them; each target's corpus (fuzz/corpus/TARGET,
# packed), seeds and regression inputs; and remote.sh, job.sh. For a machine without Rust
# (fuzz/README.md says how it is run).
set -euo pipefail
cd "$(dirname "$0")/../.."
pack=.fuzzbin
rm -rf "$pack"
mkdir -p "$pack"/{bin,lib,corpus,seeds,regressions}
for target in gguf_reader tokenizer chat_template sampler; do
  strip -o "$pack/bin/$target" "fuzz/target/x86_64-unknown-linux-gnu/release/$target"
  mkdir -p "fuzz/corpus/$target"
  tar -czf "$pack/corpus/$target.tar.gz" -C fuzz/corpus "$target"
  cp -r "fuzz/seeds/$target" "$pack/seeds/"
  [ -d "engine/tests/data/fuzz/$target" ] && cp -r "engine/tests/data/fuzz/$target" "$pack/regressions/"
done
for lib in libstdc++.so.6 libgcc_s.so.1; do
  cp -L "$(ldd "$pack/bin/chat_template" | awk -v l="$lib" '$1 == l {print $3}')" "$pack/lib/"
done
cp fuzz/remote/remote.sh fuzz/remote/job.sh "$pack/"
chmod +x "$pack"/*.sh "$pack"/bin/*
du -sh "$pack"
