#!/usr/bin/env bash
# Installs everything, builds the example closure with Nix, builds its image with nixlayer,
# loads it into podman and runs it: the last line is "Hello from a nixlayer image!".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps
hello=$(nix-build examples/hello.nix -A hello --no-out-link)
busybox=$(nix-build examples/hello.nix -A busybox --no-out-link)
luigi --module pipelines BuildImage --name hello --tag latest \
    --contents "[\"$hello\", \"$busybox\"]" --config '{"Cmd": ["/bin/hello"]}' \
    --output hello.tar
podman load -q -i hello.tar
# The flags: see the README's "Your first image".
podman --runtime runc run --rm --network none \
    --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 localhost/hello:latest
