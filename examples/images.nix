# Several images in one spec, built in one run (shared layers once):
#   nix-build examples/images.nix
#   luigi --module pipelines BuildImages --spec ./result --output-dir examples/out --report /tmp/report.json
# writes examples/out/hello.tar and examples/out/shell.tar (each image's attribute name).
{ nixlayer ? import ../nix { }, pkgs ? import ./hello.nix }:

nixlayer.buildImages {
  hello = import ./hello-image.nix { inherit nixlayer pkgs; };
  shell = nixlayer.buildLayeredImage {
    name = "busybox-shell";
    tag = "latest";
    contents = [ pkgs.busybox ];
    config = {
      Cmd = [ "/bin/sh" ];
      Env = [ "GREETING=${pkgs.greeting}/share/hello/greeting.txt" ];
    };
  };
}
