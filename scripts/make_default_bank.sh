#!/usr/bin/env bash
# Regenerate the embedded default bank (src/masterkey/assets/default_bank) from the real weights in ../shared/models.
# Usage: bash scripts/make_default_bank.sh [SHARED_MODELS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
models=${1:-../shared/models}
masterkey harvest \
  "$models/mobilenet_v2_imagenet.pth" \
  "$models/efficientnet_lite0_imagenet.pth" \
  "$models"/cifar10-convnext/convnext_atto_s0_e20.safetensors \
  "$models"/cifar10-convnext/convnext_atto_s1_e20.safetensors \
  "$models"/cifar10-convnext/convnext_atto_s2_e55.safetensors \
  "$models"/cifar10-convnext/convnext_femto_s0_e20.safetensors \
  "$models"/cifar10-convnext/convnextv2_atto_s0_e20.safetensors \
  -o src/masterkey/assets/default_bank --overwrite
