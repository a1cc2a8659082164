# nixlayer's Nix library: describe images in Nix, build them with nixlayer.
#
#   let nixlayer = import ./nix { }; in
#   nixlayer.buildLayeredImage { name = "hello"; contents = [ hello ]; config.Cmd = [ "/bin/hello" ]; }
#
# then `nix-build` it and `luigi --module pipelines BuildImage --spec ./result --output hello.tar`.
#
# buildLayeredImage (and its alias streamLayeredImage) takes the arguments of nixpkgs
# dockerTools.buildLayeredImage under the same names (extraCommands, fakeRootCommands and
# includeNixDB too), nix2container's copyToRoot and perms, plus nixlayer's own; it evaluates to a
# derivation whose output is an image spec: one JSON file with the image's parameters and its
# closure graph (exportReferencesGraph). buildImages takes an attribute set or a list of such
# images and gives one spec of them all, for `BuildImages --spec`; in the attribute set, a list
# of images of one name, each with its own `platform`, is one multi-platform image index. The
# spec refers to every store path of its images, so keeping it (a result link) keeps them alive.
#
# Builtins only: no nixpkgs. The builder is /bin/sh using shell built-ins only (read, printf),
# so it also builds in Nix's sandbox, whose /bin/sh is a bare busybox shell.
#
# `system` is where the (tiny) spec is built; flakes pass it, as builtins.currentSystem is not
# available in pure evaluation.
{ system ? builtins.currentSystem }:

let
  specVersion = 1;
  storeDir = builtins.storeDir;
  storePathPattern = "${storeDir}/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+._?=-]+";

  # Argument -> spec field, i.e. the BuildImage parameter it sets.
  fields = {
    # as nixpkgs dockerTools.buildLayeredImage
    name = "name";
    tag = "tag";
    contents = "contents";
    config = "config";
    created = "created";
    mtime = "mtime";
    maxLayers = "max_layers";
    layeringPipeline = "layering_pipeline";
    uid = "uid";
    gid = "gid";
    uname = "uname";
    gname = "gname";
    includeStorePaths = "include_store_paths";
    architecture = "architecture";
    fromImage = "from_image"; # see fromImageSource
    extraCommands = "extra_commands";
    fakeRootCommands = "fake_root_commands";
    includeNixDB = "include_nix_db";
    # as nix2container
    copyToRoot = "copy_to_root";
    perms = "perms";
    # nixlayer's own
    platform = "platform"; # "linux/arm64", or { architecture = "arm"; variant = "v7"; }
    layering = "layering";
    format = "format";
    compression = "compression";
    compressionLevel = "compression_level";
    # the manifest's org.opencontainers.image.source, .revision and .version annotations
    source = "source";
    revision = "revision";
    version = "version";
  };

  # Arguments of the result, as nixpkgs: added to the derivation, not to the image.
  resultArguments = [ "passthru" "meta" ];

  # nixpkgs arguments nixlayer does not support yet, each with the value that leaves it unused
  # (given that value, the image is the same; given another, evaluation fails naming it).
  unsupported = {
    enableFakechroot = false;
    debug = false;
    compressor = "none"; # nixlayer's docker-archive is an uncompressed tar, as streamLayeredImage's
  };

  fail = function: message: throw "nixlayer.${function}: ${message}";

  upper = [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ];
  lower = [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ];
  toLower = builtins.replaceStrings upper lower;

  # What to say instead of "not supported yet" for an unsupported argument.
  unsupportedWhy = {
    enableFakechroot = "'enableFakechroot' is not supported: fakeRootCommands run under fakeroot in a copy of the customisation layer's tree, without a chroot (store paths are reached through the host's store); leave it out";
    compressor = "'compressor' other than \"none\" is not supported: nixlayer's docker-archive is an uncompressed tar, as streamLayeredImage's; for compressed layers use format = \"oci-archive\" (or \"oci\") with compression = \"gzip\" or \"zstd\"";
  };

  # The store path of one `contents` (or `copyToRoot`) item: a derivation (its default output),
  # a path (copied into the store) or a string naming a store path.
  contentPath = function: argument: item:
    let
      path = if builtins.isAttrs item || builtins.isPath item || builtins.isString item then "${item}"
        else fail function "${argument}: expected derivations or store paths, got a ${builtins.typeOf item}";
    in
    if builtins.match storePathPattern path != null then path
    else fail function "${argument}: ${path} is not a store path (${storeDir}/HASH-NAME)";

  # nix2container's perms: a list of rules; a rule's `path` (a derivation or store path) as its
  # store path. The rest is checked by nixlayer when the spec is read.
  permRule = function: rule:
    if !(builtins.isAttrs rule) then fail function "perms: expected a list of attribute sets (rules), got a ${builtins.typeOf rule} in it"
    else rule // (if rule ? path then { path = contentPath function "perms: path" rule.path; } else { });

  # fromImage: as in nixpkgs, a docker-archive file (a path, or a derivation such as
  # dockerTools.pullImage's or another image's); or a base image in skopeo's transport syntax
  # (docker-archive:FILE, oci:DIR[:TAG], oci-archive:FILE[:TAG], docker://HOST/REPO[:TAG]).
  fromImageSource = function: value:
    if value == null then null
    else if builtins.isAttrs value || builtins.isPath value then "docker-archive:${value}"
    else if builtins.isString value && builtins.match "(docker-archive|oci|oci-archive):.+|docker://.+" value != null then value
    else if builtins.isString value && builtins.match "/.+" value != null then "docker-archive:${value}"
    else fail function "fromImage: expected a docker-archive file (a path or a derivation) or a base image such as \"docker://registry:5000/team/base:1\", got ${if builtins.isString value then "\"${value}\"" else "a ${builtins.typeOf value}"}";

  # The store paths a string mentions, as nixlayer finds those of an image config (they join
  # the image's closure, as in nixpkgs).
  mentionedStorePaths = text:
    map builtins.head (builtins.filter builtins.isList (builtins.split "(${storePathPattern})" text));

  unique = list: builtins.attrNames (builtins.listToAttrs (map (name: { inherit name; value = null; }) list));

  # The spec's description of one image: its key, its spec fields and the store paths whose
  # closure the spec must hold.
  describe = function: args:
    let
      names = builtins.attrNames args;
      unknown = builtins.filter (n: !(fields ? ${n}) && !(unsupported ? ${n}) && !(builtins.elem n resultArguments)) names;
      used = builtins.filter (n: unsupported ? ${n} && args.${n} != unsupported.${n}) names;
      name = if builtins.isString (args.name or null) then toLower args.name
        else fail function "name: expected a string (the image name), got ${if args ? name then "a ${builtins.typeOf args.name}" else "none"}";
      asList = c: if builtins.isList c then c else [ c ];
      contentsList = asList (args.contents or [ ]);
      config = if args.config or null == null then { }
        else if builtins.isAttrs args.config then args.config
        else fail function "config: expected an attribute set (the image config), got a ${builtins.typeOf args.config}";
      contents = map (contentPath function "contents") contentsList;
      copyToRoot = map (contentPath function "copyToRoot") (asList (args.copyToRoot or [ ]));
      perms = let p = args.perms or [ ]; in
        if builtins.isList p then map (permRule function) p
        else fail function "perms: expected a list of rules, got a ${builtins.typeOf p}";
      # nixpkgs' layeringPipeline: a list of steps, or a JSON file of one (a path or a store
      # path, read as nixpkgs' make-layers.nix does with jq). Giving one means the pipeline
      # layering, as in nixpkgs.
      pipeline = let p = args.layeringPipeline or null; in
        if p == [ ] then fail function "layeringPipeline is empty: it makes no layers (nixpkgs' tool fails on it); give steps, or leave it out"
        else if p == null || builtins.isList p then p
        else if builtins.isPath p || builtins.isString p || builtins.isAttrs p then builtins.fromJSON (builtins.readFile p)
        else fail function "layeringPipeline: expected a list of steps or a JSON file of one, got a ${builtins.typeOf p}";
      layering =
        if pipeline == null then { }
        else if (args.layering or "pipeline") != "pipeline" then
          fail function "layeringPipeline is given, but layering is \"${args.layering}\": leave out layering (or make it \"pipeline\")"
        else { layering = "pipeline"; layering_pipeline = pipeline; };
      given = builtins.removeAttrs args (builtins.attrNames unsupported ++ resultArguments ++ [ "fromImage" ]);
      fromImage = fromImageSource function (args.fromImage or null);
      parameters = builtins.listToAttrs (builtins.filter (f: f.value != null) (map
        (n: { name = fields.${n}; value = args.${n}; })
        (builtins.attrNames given)));
      baseName = builtins.replaceStrings [ ":" ] [ "-" ] (baseNameOf name);
    in
    if unknown != [ ] then fail function "unknown argument '${builtins.head unknown}'"
    else if used != [ ] then
      fail function (unsupportedWhy.${builtins.head used} or "'${builtins.head used}' (a dockerTools argument) is not supported yet: leave it out")
    else {
      key = baseName;
      parameters = parameters // layering // { inherit name contents config; }
        // (if fromImage == null then { } else { from_image = fromImage; })
        // (if args ? copyToRoot then { copy_to_root = copyToRoot; } else { })
        // (if args ? perms then { inherit perms; } else { });
      roots = unique (map builtins.unsafeDiscardStringContext (contents ++ copyToRoot ++ mentionedStorePaths (builtins.toJSON config)));
      result = builtins.intersectAttrs { passthru = null; meta = null; } args;
    };

  # The spec derivation of some described images. Its structured attributes are the spec: Nix
  # writes them, with the closure of `roots` as `closure`, to .attrs.json, which the builder
  # copies to $out with shell built-ins.
  spec = name: images:
    derivation {
      inherit name system;
      builder = "/bin/sh";
      args = [
        "-c"
        ''
          while IFS= read -r line || [ -n "$line" ]; do printf '%s\n' "$line"; done < .attrs.json > ${builtins.placeholder "out"}
        ''
      ];
      __structuredAttrs = true;
      preferLocalBuild = true;
      allowSubstitutes = false;
      nixlayer_spec = specVersion;
      store_dir = storeDir;
      images = map (image: image.parameters // { inherit (image) key; }) images;
      exportReferencesGraph.closure = unique (builtins.concatMap (image: image.roots) images);
    };

  withResult = image: drv:
    drv // (image.result.passthru or { }) // { nixlayerImage = image; }
      // (if image.result ? meta then { inherit (image.result) meta; } else { });

  buildLayeredImage = args:
    let image = describe "buildLayeredImage" args;
    in withResult image (spec "${image.key}.nixlayer.json" [ image ]);

  imageOf = where: value:
    if builtins.isAttrs value && value ? nixlayerImage then value.nixlayerImage
    else throw "nixlayer.buildImages: ${where} is not a nixlayer.buildLayeredImage image";

  # The images of one multi-platform index called `index`: a list of images, each of its own
  # platform; their keys are INDEX-1, INDEX-2, ... in the list's order.
  indexImages = index: list:
    if !(builtins.isList list) || list == [ ] then throw "nixlayer.buildImages: ${index}: expected an image or a non-empty list of images (one per platform)"
    else builtins.genList (i:
      let image = imageOf "element ${toString i} of ${index}" (builtins.elemAt list i);
      in image // { key = "${index}-${toString (i + 1)}"; parameters = image.parameters // { inherit index; }; })
      (builtins.length list);

  # One spec of several images: an attribute set (each image's key is its attribute name; a list
  # of images, one per platform, makes one multi-platform index of that name) or a list (each
  # image's key is the last part of its name, which must then differ).
  buildImages = images:
    let
      described =
        if builtins.isAttrs images && !(images ? nixlayerImage) then
          builtins.concatMap (key: if builtins.isList images.${key} then indexImages key images.${key}
            else [ ((imageOf key images.${key}) // { inherit key; }) ]) (builtins.attrNames images)
        else if builtins.isList images then
          builtins.genList (i: imageOf "element ${toString i} of the list" (builtins.elemAt images i)) (builtins.length images)
        else throw "nixlayer.buildImages: expected an attribute set or a list of images, got a ${builtins.typeOf images}";
      keys = map (image: image.key) described;
      badKeys = builtins.filter (key: builtins.match "[A-Za-z0-9_+-][A-Za-z0-9._+-]*" key == null) keys;
      duplicate = builtins.filter (key: builtins.length (builtins.filter (k: k == key) keys) > 1) keys;
    in
    if described == [ ] then throw "nixlayer.buildImages: no images"
    else if badKeys != [ ] then
      throw "nixlayer.buildImages: '${builtins.head badKeys}' cannot name an image's output file: use letters, digits and . _ + - (not a leading .)"
    else if duplicate != [ ] then
      throw "nixlayer.buildImages: two images are called '${builtins.head duplicate}': give an attribute set, whose names tell them apart"
    else spec "images.nixlayer.json" described;
in
{
  inherit buildLayeredImage buildImages specVersion;
  # nixpkgs streams where buildLayeredImage writes a file; here both give a spec.
  streamLayeredImage = buildLayeredImage;
}
