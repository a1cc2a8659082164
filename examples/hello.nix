# A small real closure that builds offline, for trying nixlayer:
#   nix-build examples/hello.nix -A hello
# It needs a static busybox on the host (Debian: apt-get install busybox-static), which
# builtins.path copies into the store. Every builder is /bin/sh, so nothing is downloaded.
let
  mk = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ("PATH=/usr/bin:/bin\nset -e\numask 022\n" + script) ];
  };

  # The host's static busybox binary, copied into the store as a single-file store path.
  busyboxBinary = builtins.path { path = /bin/busybox; name = "busybox-static"; };

  # bin/busybox, and bin/sh, bin/ls, ... as symlinks to it (busybox picks the applet by name).
  busybox = mk "busybox-1.0" ''
    mkdir -p $out/bin
    cp ${busyboxBinary} $out/bin/busybox
    chmod 555 $out/bin/busybox
    for tool in sh ls cat echo; do ln -s busybox $out/bin/$tool; done
  '';

  greeting = mk "hello-greeting-1.0" ''
    mkdir -p $out/share/hello
    printf 'Hello from a nixlayer image!\n' > $out/share/hello/greeting.txt
  '';

  hello = mk "hello-nixlayer-1.0" ''
    mkdir -p $out/bin
    printf '#!%s/bin/sh\nexec %s/bin/cat %s/share/hello/greeting.txt\n' ${busybox} ${busybox} ${greeting} > $out/bin/hello
    chmod 555 $out/bin/hello
  '';
in {
  inherit busybox greeting hello;
}
