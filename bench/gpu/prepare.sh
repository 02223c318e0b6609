#!/usr/bin/env bash
# Packs what a lent GPU machine needs from ../shared into .carry/ (git-ignored), for bench/gpu/session.sh:
#   .carry/cifar10.tar.xz                      ../shared/data/cifar10 (53 MiB of small JPEGs -> about 18 MiB:
#                                              their identical headers compress well)
#   .carry/convnext_atto_s0_e20.safetensors    the CIFAR-10 ConvNeXt of the accuracy objective
# Usage: bash bench/gpu/prepare.sh [SHARED]    (default ../shared)
set -euo pipefail
cd "$(dirname "$0")/../.."
shared=${1:-../shared}
mkdir -p .carry
tar -C "$shared/data" -cf - cifar10 | xz -6 -T0 > .carry/cifar10.tar.xz.tmp
mv .carry/cifar10.tar.xz.tmp .carry/cifar10.tar.xz
cp "$shared/models/cifar10-convnext/convnext_atto_s0_e20.safetensors" .carry/
du -sh .carry/*
