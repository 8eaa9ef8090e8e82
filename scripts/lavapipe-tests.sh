#!/usr/bin/env bash
# The GPU code path on any machine: installs Mesa's lavapipe (a Vulkan device that runs on the
# CPU) when no Vulkan CPU adapter is installed, then runs the library's wgpu tests on it, failing
# (not skipping) if the device cannot be found.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! compgen -G "/usr/share/vulkan/icd.d/lvp_icd*.json" > /dev/null; then
    echo "installing lavapipe (mesa-vulkan-drivers) and the Vulkan loader (libvulkan1)"
    sudo_if_needed=""
    [ "$(id -u)" -ne 0 ] && sudo_if_needed="sudo"
    $sudo_if_needed apt-get install -y --no-install-recommends mesa-vulkan-drivers libvulkan1
fi
SHARPNESS_REQUIRE_WGPU=1 cargo test -p sharpness --features wgpu --test wgpu "$@"
