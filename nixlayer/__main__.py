"""The ``nixlayer`` command line: ``python -m nixlayer SUBCOMMAND ...``.

Subcommands:

- ``plan``: print which store paths go into which layer of an image.
- ``gc``: remove what no build has used for some days from a layer store.

Errors are printed as one line, ``nixlayer: error: <message>``, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from nixlayer.base_image import read_base_image
from nixlayer.closure import ClosureGraph, read_graph
from nixlayer.errors import NixlayerError
from nixlayer.human import count, size
from nixlayer.image import config_store_paths
from nixlayer.index import Platform, image_platform
from nixlayer.layerstore import LayerStore, default_layer_store
from nixlayer.plan import DEFAULT_LAYERING, DEFAULT_MAX_LAYERS, LAYERINGS, LayerPlan, check_layering, plan_image
from nixlayer.reference import check_name
from nixlayer.registry import push_reference
from nixlayer.spec import override_warning, read_spec
from nixlayer.storepath import DEFAULT_STORE_DIR, normalize_store_dir, resolve_store_path


def _print_table(plan: LayerPlan) -> None:
    """The plan as a table: per layer its number, NAR bytes (``+``: some unknown), popularity
    (popularity layering), store paths, and after the first one why they are together; then
    the customisation layer and the totals."""
    print(f"{'layer':>5}  {'bytes':>12}  {'popularity':>12}  store paths  (why)")
    for number, layer in enumerate(plan.layers, start=plan.base_layers + 1):
        nar = f"{layer.nar_size}" + ("" if layer.nar_size_complete else "+")
        popularity = "" if layer.popularity is None else str(layer.popularity)
        for index, path in enumerate(layer.store_paths):
            if index == 0:
                why = f"  ({layer.reason})" if layer.reason else ""
                print(f"{number:>5}  {nar:>12}  {popularity:>12}  {path}{why}")
            else:
                print(f"{'':>5}  {'':>12}  {'':>12}  {path}")
    print(f"{plan.customisation_layer_index + 1:>5}  {'':>12}  {'':>12}  (customisation layer)")
    total = sum(layer.nar_size for layer in plan.layers)
    complete = all(layer.nar_size_complete for layer in plan.layers)
    print(f"total: {count(len(plan.store_paths), 'store path')} ({size(total)}{'' if complete else '+'}) in"
          f" {count(len(plan.layers), 'store layer')} of max_layers {plan.max_layers}, {plan.layering} layering")


def _plan(args: argparse.Namespace) -> int:
    include_store_paths = True
    layering = args.layering or DEFAULT_LAYERING
    pipeline = args.layering_pipeline
    base_layers = args.base_layers
    name, tag, platform = args.name, args.tag, args.platform
    if args.spec is not None:
        (graph, roots, config_paths, max_layers, include_store_paths, layering, pipeline, base_layers, name, tag,
         platform) = _spec_plan_inputs(args)
    else:
        platform = image_platform(platform or "", "")
        check_layering(layering, pipeline)  # a bad pipeline: before the closure is read
        if not args.roots:
            raise NixlayerError("give the image's store paths (ROOT ...), or --spec FILE")
        store_dir = args.store_dir or DEFAULT_STORE_DIR
        roots = [resolve_store_path(root, store_dir) for root in args.roots]
        config_paths = [resolve_store_path(path, store_dir) for path in args.config_path]
        graph = read_graph([*roots, *config_paths], graph_file=args.graph,
                           scan_root=args.store_dir_scan, store_dir=store_dir)
        max_layers = DEFAULT_MAX_LAYERS if args.max_layers is None else args.max_layers
    previous = _previous_layers(args, layering, name, tag, platform)
    plan = plan_image(graph, roots, config_paths, max_layers, base_layers or 0, include_store_paths=include_store_paths,
                      layering=layering, pipeline=pipeline, previous=previous)
    if args.json:
        json.dump(plan.to_json(), sys.stdout, indent=2)
        print()
    else:
        _print_table(plan)
    return 0


def _previous_layers(args: argparse.Namespace, layering: str, name: str | None, tag: str | None,
                     platform: Platform) -> list[list[str]] | None:
    """The store layers of the previous build the ``stable`` layering keeps: those of the plan
    ``--previous`` names, else of the build BuildImage or PushImage would find in the layer
    store with these options (``--output`` and ``--name``, else ``--push``; see
    ``LayerStore.previous_build``), else None (a first build)."""
    where = args.output or args.push
    if args.previous is not None and where:
        raise NixlayerError("--previous gives the previous build: no --output or --push with it")
    if args.previous is not None:
        return _plan_layers(args.previous)
    if layering != "stable" or not where:
        return None
    if args.output and not name:
        raise NixlayerError("--output finds the previous build of an image by its name too: give --name")
    if name:
        check_name(name)  # refused as BuildImage refuses it
    if args.push and args.tag:
        push_reference(args.push, args.tag)  # --tag beside a target naming another: refused as PushImage does
    return _layer_store(args).previous_build(name=name or "", output=args.output or "", push=args.push or "",
                                             tag=tag or "", platform=str(platform))


def _layer_store(args: argparse.Namespace) -> LayerStore:
    """``--layer-store``, else the builds' own: ``[nixlayer] layer_store`` of the luigi.cfg files
    Luigi reads here (``LUIGI_CONFIG_PATH``, ``./luigi.cfg``, ...), else the default. Luigi's
    configuration reader is the one place that knows those files, so it is asked."""
    if args.layer_store:
        return LayerStore(args.layer_store)
    import luigi.configuration  # here only: the plan command's other paths need no Luigi

    return LayerStore(luigi.configuration.get_config().get("nixlayer", "layer_store", default_layer_store()))


def _plan_layers(path: str) -> list[list[str]]:
    """The store layers of a previous build's plan, as ``plan --json`` printed it (``--previous``)."""
    try:
        with open(path, "rb") as file:
            layers = json.load(file)["layers"]
        return [list(layer["store_paths"]) for layer in layers]
    except OSError as error:
        raise NixlayerError(f"cannot read previous plan {path}: {error.strerror}") from None
    except (ValueError, KeyError, TypeError):
        raise NixlayerError(f"previous plan {path} is not a plan as plan --json prints it") from None


def _spec_plan_inputs(args: argparse.Namespace) -> tuple[ClosureGraph, list[str], list[str], int, bool, str, Any, int,
                                                        str | None, str | None, Platform]:
    """The closure graph, contents, config store paths, layer budget, include_store_paths,
    layering, layering pipeline, base layers, name, tag and platform of ``--spec``'s image, as
    BuildImage takes them (``ImageSpec.parameters``): ``--max-layers``, ``--store-dir``,
    ``--layering``, ``--layering-pipeline``, ``--name``, ``--tag`` and ``--platform`` override what the spec
    sets, with a warning line; ``--base-layers``, else the layers of the image's base image, read
    (its manifest and config, kept in the layer store as a build keeps them)."""
    if args.roots or args.graph or args.store_dir_scan or args.config_path:
        raise NixlayerError("--spec gives the image's store paths and closure: no ROOT, --graph, --store-dir-scan or --config-path with it")
    spec = read_spec(args.spec)
    pipeline = args.layering_pipeline
    if pipeline:
        try:
            pipeline = json.loads(pipeline)  # as the spec holds it
        except ValueError:
            pass  # not JSON: plan_image says so
    given = {name: value for name, value in (("max_layers", args.max_layers), ("store_dir", args.store_dir),
                                             ("layering", args.layering), ("layering_pipeline", pipeline),
                                             ("name", args.name), ("tag", args.tag), ("platform", args.platform))
             if value is not None}
    parameters, overrides = spec.parameters(args.spec_image, given)
    if overrides:
        print(f"nixlayer: warning: {override_warning(args.spec, overrides)}", file=sys.stderr)
    store_dir = parameters["store_dir"]
    base_layers = args.base_layers
    platform = image_platform(parameters.get("platform", ""), parameters.get("architecture", ""))
    if base_layers is None and parameters.get("from_image"):
        base_layers = len(read_base_image(parameters["from_image"], platform,
                                          _layer_store(args)).layers)
    roots = [resolve_store_path(path, store_dir)  # copy_to_root paths are roots as contents are
             for path in [*parameters.get("contents", []), *parameters.get("copy_to_root", [])]]
    config_paths = config_store_paths(parameters.get("config", {}), normalize_store_dir(store_dir))
    return (spec.closure(sorted({*roots, *config_paths})), roots, config_paths,
            parameters.get("max_layers", DEFAULT_MAX_LAYERS), parameters.get("include_store_paths", True),
            parameters.get("layering", DEFAULT_LAYERING), parameters.get("layering_pipeline"), base_layers,
            parameters.get("name"), parameters.get("tag"), platform)


def _gc(args: argparse.Namespace) -> int:
    store = LayerStore(args.layer_store)
    garbage = store.collect_garbage(args.unused_days, dry_run=args.dry_run)
    kinds = [count(garbage.records, "layer record"), count(garbage.blobs, "blob"),
             count(garbage.fragments, "customisation fragment"), count(garbage.stamps, "image stamp"),
             count(garbage.temporaries, "abandoned temporary file")]
    print(f"nixlayer: gc {store.root}: {'would remove' if args.dry_run else 'removed'} {', '.join(kinds)}:"
          f" {size(garbage.bytes)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand; each sets ``func(args) -> exit status``."""
    parser = argparse.ArgumentParser(prog="nixlayer", description="Layered OCI/Docker images from Nix store closures.")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plan = subcommands.add_parser(
        "plan",
        help="show which store paths go into which layer",
        description="Group the image's store paths into layers (--layering: stable, the default, or nixpkgs'"
                    " popularity, auto or pipeline, as streamLayeredImage does).",
    )
    plan.add_argument("roots", nargs="*", metavar="ROOT", help="store paths of the image contents, or links to them such as ./result")
    plan.add_argument("--spec", metavar="FILE",
                      help="an image spec (nix-build of nixlayer's Nix library) instead of ROOTs: its contents, config and closure")
    plan.add_argument("--spec-image", metavar="KEY", help="the image to plan, in a spec of several")
    source = plan.add_mutually_exclusive_group()
    source.add_argument("--graph", metavar="FILE",
                        help="closure graph JSON (nix path-info --json --recursive, or exportReferencesGraph); - for stdin")
    source.add_argument("--store-dir-scan", metavar="STORE_ROOT",
                        help="scan the store directory under STORE_ROOT for references, without Nix")
    plan.add_argument("--store-dir", default=None,
                      help=f"the Nix store directory (default: the spec's, else {DEFAULT_STORE_DIR})")
    plan.add_argument("--config-path", action="append", default=[], metavar="STORE_PATH",
                      help="a store path the image config mentions (repeatable)")
    plan.add_argument("--max-layers", type=int, default=None,
                      help=f"layer budget of the whole image (default: the spec's, else {DEFAULT_MAX_LAYERS})")
    plan.add_argument("--layering", choices=LAYERINGS, default=None,
                      help=f"how store paths are grouped into layers (default: the spec's, else {DEFAULT_LAYERING})")
    plan.add_argument("--layering-pipeline", metavar="JSON", default=None,
                      help="for --layering pipeline: nixpkgs' layeringPipeline, a JSON list of steps")
    plan.add_argument("--previous", metavar="PLAN_JSON",
                      help="for --layering stable: the previous build's plan, as plan --json printed it (default:"
                           " the build of --output and --name, or of --push, in the layer store)")
    plan.add_argument("--name", default=None, help="the image name, as BuildImage's --name (default: the spec's)")
    plan.add_argument("--tag", default=None,
                      help="the image tag, as BuildImage's --tag (default: the spec's); with --push, a target without"
                           " a tag takes it")
    plan.add_argument("--output", metavar="PATH", default=None,
                      help="for --layering stable: BuildImage's --output; the build last written there under --name"
                           " is the previous build")
    plan.add_argument("--push", metavar="TARGET", default=None,
                      help="for --layering stable: BuildImage's --push or PushImage's --target; without --output, the"
                           " image last pushed there is the previous build")
    plan.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", default=None,
                      help="the image's platform, as BuildImage's --platform (default: the spec's, else this machine's)")
    plan.add_argument("--layer-store", metavar="DIR", default=None,
                      help=f"the layer store of the builds (default: [nixlayer] layer_store of the luigi.cfg"
                           f" Luigi reads here, else {default_layer_store()})")
    plan.add_argument("--base-layers", type=int, default=None, metavar="N",
                      help="layers of the base image, counted against max_layers (default: 0; with --spec, those"
                           " of its image's base image, read: its manifest and config)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(func=_plan)

    gc = subcommands.add_parser(
        "gc",
        help="remove what no build has used for some days from a layer store",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Removes from the layer store what no build has used in the last DAYS days:
layers (their records and blobs), customisation layer fragments, the stamps
that mark an image as written or pushed (a later build of that image writes
or pushes it again), and temporary files of killed builds.

Keeps everything a build used in those days (a build that has nothing to
write still uses its images' layers) and everything outside the layer store:
image files, OCI layouts, registries. Used means read or written: the later
of a file's access and modification times.

What it removes is a cache: a later build writes again what it needs.
Run it when no build uses this layer store.""",
    )
    gc.add_argument("--unused-days", type=float, required=True, metavar="DAYS",
                    help="remove what no build has used in the last DAYS days (1 or more)")
    gc.add_argument("--layer-store", required=True, metavar="DIR",
                    help="the layer store to clean: [nixlayer] layer_store of the builds' luigi.cfg (whose"
                         f" default is {default_layer_store()})")
    gc.add_argument("--dry-run", action="store_true", help="say what would be removed, and remove nothing")
    gc.set_defaults(func=_gc)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 on a NixlayerError)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except NixlayerError as error:
        print(f"nixlayer: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
