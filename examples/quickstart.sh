#!/usr/bin/env bash
# Installs everything, builds the example image's spec with Nix (examples/hello-image.nix: the
# closure and the image's parameters), builds the image from it with nixlayer,
# loads it into podman and runs it: the last line is "Hello from a nixlayer image!".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps
nix-build examples/hello-image.nix     # the image spec: ./result, which keeps its store paths
luigi --module pipelines BuildImage --spec ./result --output hello.tar
podman load -q -i hello.tar
# The flags: see the README's "Your first image".
podman --runtime runc run --rm --network none \
    --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 localhost/hello:latest
