"""nixlayer: layered OCI/Docker images from Nix store closures.

The core library. Nothing in this package imports Luigi: the tasks in ``tasks/`` call it.

- ``storepath``: store path names, hash parts, the nixpkgs sort key.
- ``closure``: closure graphs (store path -> references), read from Nix JSON, a live Nix store,
  or a plain store directory.
- ``popularity``: the nixpkgs ``referencesByPopularity`` order, computed fast.
- ``plan``: which store paths go into which layer.
- ``layer``: reproducible layer tarballs, written in one pass with their digests.
- ``customisation``: the customisation layer (root symlinks into ``contents``).
- ``compression``: none, gzip, zstd streams.
- ``image``: the image config and manifests (OCI image-spec, Docker image spec v1.2).
- ``docker_archive``, ``oci_layout``: the output formats; ``formats``: one entry point for them.
- ``mediatypes``: media types; ``atomic``: atomic outputs; ``layerstore``: layers kept on disk.
- ``errors``: NixlayerError, the one error type for bad input and failed operations.
- ``reference``: image name and tag checks (distribution reference grammar).
- ``registry``: pushing to a registry and reading from one (OCI distribution spec), with the
  artifacts attached to an image.
- ``base_image``: base images (``fromImage``): read from an archive, a layout or a registry,
  their layers copied and checked, their config inherited.
- ``index``: platforms and multi-platform image indexes.
- ``rootfs``, ``perms``, ``nixdb``: what the customisation layer holds beyond the contents'
  symlinks (copied trees, commands, a Nix database) and permission rules for every layer.
- ``sbom``: an image's software bill of materials (CycloneDX), from its closure graph.
"""
