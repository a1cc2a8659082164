# The hello image, described in Nix and built with nixlayer:
#   nix-build examples/hello-image.nix                  # the image spec: ./result, in a second
#   luigi --module pipelines BuildImage --spec ./result --output hello.tar
#   podman load -i hello.tar && podman run --rm localhost/hello:latest
# It is written as nixpkgs' documentation writes a dockerTools.buildLayeredImage call: porting
# one to nixlayer is renaming the function. `pkgs` is examples/hello.nix here (builtins-only
# stand-ins, no nixpkgs needed); with nixpkgs, pass yours: --arg pkgs 'import <nixpkgs> { }'
# and use pkgs.hello as contents.
{ nixlayer ? import ../nix { }, pkgs ? import ./hello.nix }:

nixlayer.buildLayeredImage {
  name = "hello";
  tag = "latest";
  contents = [ pkgs.hello pkgs.busybox ];
  config.Cmd = [ "/bin/hello" ];
}
