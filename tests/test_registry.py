"""nixlayer.registry against a real registry (docker-registry 2.8 on loopback) and skopeo.

Uploads and mounts are counted from the registry's own access log (``RegistryServer``), not from
the client's counters.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from registry_fixture import (  # noqa: E402
    AUTH_PASSWORD,
    AUTH_USER,
    FaultProxy,
    auth_registry,  # noqa: F401 - fixture
    free_port,
    make_image,
    registry,  # noqa: F401 - fixture
    token_registry,  # noqa: F401 - fixture
)

from nixlayer.errors import NixlayerError  # noqa: E402
from nixlayer.mediatypes import MEDIA_TYPE_OCI_MANIFEST  # noqa: E402
from nixlayer.registry import (  # noqa: E402
    Credentials,
    PushTarget,
    RetryPolicy,
    load_credentials,
    parse_push_target,
    parse_www_authenticate,
    PushOptions,
    push_image,
)

FAST = RetryPolicy(tries=4, base_delay=0.01, max_delay=0.05, timeout=20)

BASE_LAYERS = [
    {"/hello.txt": b"hello from layer one\n"},
    {"/etc/data.txt": b"x" * 5000},
    {"/bin/tool": b"#!/bin/sh\necho tool v1\n"},
]


def skopeo(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    tool = shutil.which("skopeo")
    assert tool is not None, "skopeo is not installed (Debian package skopeo)"
    return subprocess.run([tool, *args], capture_output=True, text=True, check=check, timeout=60)


def inspect(host: str, ref: str, check: bool = True) -> subprocess.CompletedProcess:
    return skopeo("inspect", "--tls-verify=false", f"docker://{host}/{ref}", check=check)


def push(image, host: str, ref: str, **options):
    options.setdefault("retry", FAST)
    return push_image(
        f"docker://{host}/{ref}", image.manifest, MEDIA_TYPE_OCI_MANIFEST, image.config, image.layers,
        PushOptions(**options),
    )


def write_auth(path: Path, host: str, user: str, password: str, prefix: str = "") -> Path:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {f"{prefix}{host}": {"auth": token}}}))
    return path


# --- parse_push_target --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("docker://127.0.0.1:5000/hello:1", PushTarget("127.0.0.1:5000", "hello", "1")),
        ("127.0.0.1:5000/a/b-c/d__e:v1.2_3", PushTarget("127.0.0.1:5000", "a/b-c/d__e", "v1.2_3")),
        ("docker://localhost/app", PushTarget("localhost", "app", "latest")),
        ("registry.example.org/team/app", PushTarget("registry.example.org", "team/app", "latest")),
        ("docker://[::1]:5000/x:T", PushTarget("[::1]:5000", "x", "T")),
        ("localhost:5000/a.b---c:_x", PushTarget("localhost:5000", "a.b---c", "_x")),
    ],
)
def test_parse_push_target_accepts(text: str, expected: PushTarget) -> None:
    assert parse_push_target(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "docker://127.0.0.1:5000",
        "docker://127.0.0.1:5000/",
        "hello:1",  # no host
        "library/hello",  # first component is not a host
        "docker://127.0.0.1:5000/Hello",  # uppercase
        "docker://127.0.0.1:5000/a//b",
        "docker://127.0.0.1:5000/-a",
        "docker://127.0.0.1:5000/a_-b",
        "docker://127.0.0.1:5000/a:.tag",
        "docker://127.0.0.1:5000/a:" + "t" * 129,
        "docker://127.0.0.1:5000/a@sha256:" + "0" * 64,
        "oci:/tmp/x",
        "docker://127.0.0.1:99999/a",
    ],
)
def test_parse_push_target_rejects(text: str) -> None:
    with pytest.raises(NixlayerError) as info:
        parse_push_target(text)
    assert "\n" not in str(info.value)


# --- credentials --------------------------------------------------------------------------------


def test_load_credentials_order_and_prefixes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    assert load_credentials("reg.example:5000") is None
    docker = tmp_path / "home" / ".docker" / "config.json"
    docker.parent.mkdir(parents=True)
    write_auth(docker, "reg.example:5000", "dock", "pw1", prefix="https://")
    assert load_credentials("reg.example:5000").as_tuple() == ("dock", "pw1")
    runtime = tmp_path / "run" / "containers" / "auth.json"
    runtime.parent.mkdir(parents=True)
    write_auth(runtime, "reg.example:5000", "podman", "pw2")
    assert load_credentials("reg.example:5000").username == "podman"
    env = write_auth(tmp_path / "env.json", "reg.example:5000", "env", "pw3")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(env))
    assert load_credentials("reg.example:5000").username == "env"
    explicit = write_auth(tmp_path / "explicit.json", "reg.example:5000", "explicit", "pw4")
    creds = load_credentials("reg.example:5000", explicit)
    assert creds.username == "explicit"
    assert "pw4" not in repr(creds) and "pw4" not in str(creds)
    assert load_credentials("other:1", explicit) is None
    with pytest.raises(NixlayerError, match="does not exist"):
        load_credentials("reg.example:5000", tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"auths": {"reg.example:5000": {"auth": "c2VjcmV0"}}}')  # "secret", no colon
    with pytest.raises(NixlayerError) as info:
        load_credentials("reg.example:5000", bad)
    assert "secret" not in str(info.value)


def test_parse_www_authenticate() -> None:
    scheme, params = parse_www_authenticate(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }


# --- pushing to a real registry -----------------------------------------------------------------


def test_push_then_inspect_and_copy(registry, tmp_path: Path) -> None:
    image = make_image(tmp_path / "img", BASE_LAYERS)
    mark = registry.mark()
    messages: list[str] = []
    result = push(image, registry.host, "nix/hello:1", log=messages.append)
    assert result.uploaded == 4 and result.mounted == 0 and result.present == 0
    assert result.uploaded_bytes == image.total_bytes
    seen = registry.blob_activity("nix/hello", mark)
    assert sorted(seen["uploaded"]) == sorted(image.layer_digests + [image.config.digest])

    info = json.loads(inspect(registry.host, "nix/hello:1").stdout)
    assert info["Layers"] == image.layer_digests
    assert info["Digest"] == result.manifest_digest

    out = tmp_path / "oci"
    skopeo("copy", "--src-tls-verify=false", f"docker://{registry.host}/nix/hello:1", f"oci:{out}:hello")
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == result.manifest_digest
    for digest in image.layer_digests:
        assert (out / "blobs" / "sha256" / digest.split(":")[1]).is_file()


def test_update_uploads_only_changed_layer_and_config(registry, tmp_path: Path) -> None:
    image = make_image(tmp_path / "v1", BASE_LAYERS)
    push(image, registry.host, "nix/update:1")
    changed = BASE_LAYERS[:2] + [{"/bin/tool": b"#!/bin/sh\necho tool v2\n"}]
    update = make_image(tmp_path / "v2", changed)
    mark = registry.mark()
    result = push(update, registry.host, "nix/update:2")
    seen = registry.blob_activity("nix/update", mark)
    assert sorted(seen["uploaded"]) == sorted([update.layers[2].digest, update.config.digest])
    assert seen["mounted"] == []
    assert (result.uploaded, result.present) == (2, 2)
    assert json.loads(inspect(registry.host, "nix/update:2").stdout)["Layers"] == update.layer_digests


def test_second_repository_mounts_layers(registry, tmp_path: Path) -> None:
    image = make_image(tmp_path / "img", BASE_LAYERS + [{"/mount.txt": b"mount me"}])
    push(image, registry.host, "nix/source:1")
    mark = registry.mark()
    result = push(image, registry.host, "nix/dest:1", mount_from=["nix/nothing-here", "nix/source"])
    seen = registry.blob_activity("nix/dest", mark)
    assert seen["uploaded"] == []
    assert sorted(seen["mounted"]) == sorted(image.layer_digests + [image.config.digest])
    assert result.mounted == 5 and result.uploaded == 0
    assert set(result.mounted_from.values()) == {"nix/source"}
    assert json.loads(inspect(registry.host, "nix/dest:1").stdout)["Layers"] == image.layer_digests


def test_mount_fallback_uploads_when_source_lacks_blob(registry, tmp_path: Path) -> None:
    image = make_image(tmp_path / "img", [{"/only-here.txt": b"unique 123"}])
    mark = registry.mark()
    result = push(image, registry.host, "nix/fallback:1", mount_from=["nix/does-not-exist"])
    seen = registry.blob_activity("nix/fallback", mark)
    assert sorted(seen["uploaded"]) == sorted(image.layer_digests + [image.config.digest])
    assert result.uploaded == 2 and result.mounted == 0
    inspect(registry.host, "nix/fallback:1")


def test_chunked_upload_through_relative_locations(registry, tmp_path: Path) -> None:
    big = bytes(range(256)) * 400  # ~100 kB, barely compressible after gzip level 0
    image = make_image(tmp_path / "img", [{"/big.bin": big}, {"/hello.txt": b"hi"}], compress_level=0)
    mark = registry.mark()
    with FaultProxy(registry.port, relative_locations=True) as proxy:
        result = push(image, proxy.host, "nix/chunked:1", chunk_size=16 * 1024)
    seen = registry.blob_activity("nix/chunked", mark)
    assert sorted(seen["uploaded"]) == sorted(image.layer_digests + [image.config.digest])
    expected_patches = sum(-(-b.size // (16 * 1024)) for b in [image.config, *image.layers])
    assert seen["patches"] == [expected_patches]
    assert result.uploaded == 3
    assert json.loads(inspect(registry.host, "nix/chunked:1").stdout)["Layers"] == image.layer_digests


def test_retry_after_first_blob_upload_fails(registry, tmp_path: Path) -> None:
    image = make_image(tmp_path / "img", [{"/hello.txt": b"retry me"}, {"/b": b"second"}])
    failed: list[str] = []

    def fail_first_upload(method: str, path: str):
        if "/blobs/uploads/" in path and method in ("POST", "PUT") and not failed:
            failed.append(f"{method} {path}")
            return 500
        return None

    messages: list[str] = []
    with FaultProxy(registry.port, fail_first_upload) as proxy:
        result = push(image, proxy.host, "nix/retry:1", log=messages.append)
    assert failed and result.uploaded == 3
    assert any("retrying" in m for m in messages)
    assert json.loads(inspect(registry.host, "nix/retry:1").stdout)["Layers"] == image.layer_digests


def test_dropped_connection_mid_chunked_upload_restarts_session(registry, tmp_path: Path) -> None:
    image = make_image(tmp_path / "img", [{"/data": bytes(range(256)) * 200}], compress_level=0)
    patches: list[str] = []
    heads: list[str] = []
    layer = image.layers[0].digest

    def faults(method: str, path: str):
        if method == "HEAD" and path.endswith(layer):
            heads.append(path)
            if len(heads) == 1:
                return 429  # too many requests: retried after a pause
        if method == "PATCH":
            patches.append(path)
            if len(patches) == 3:  # the layer's second chunk (the config took one PATCH)
                return "drop"
        return None

    mark = registry.mark()
    with FaultProxy(registry.port, faults) as proxy:
        result = push(image, proxy.host, "nix/drop:1", chunk_size=8 * 1024)
    assert result.uploaded == 2
    assert len(heads) == 2 and len(patches) > 3
    starts = [r for r in registry.requests()[mark:] if r.method == "POST" and r.path == "/v2/nix/drop/blobs/uploads/"]
    assert len(starts) == 3  # one restarted session for the layer, one for the config
    assert json.loads(inspect(registry.host, "nix/drop:1").stdout)["Layers"] == image.layer_digests


def test_failing_push_leaves_no_tag(registry, tmp_path: Path) -> None:
    image = make_image(tmp_path / "img", [{"/a": b"ok"}, {"/b": b"this one fails"}])
    bad = image.layers[1].digest

    def always_fail(method: str, path: str):
        return 500 if method == "PUT" and bad.split(":")[1] in path else None

    with FaultProxy(registry.port, always_fail) as proxy:
        with pytest.raises(NixlayerError) as info:
            push(image, proxy.host, "nix/broken:1")
    message = str(info.value)
    assert bad in message and "500" in message and "nix/broken" in message and proxy.host in message
    assert "\n" not in message
    manifests = [r for r in registry.requests() if r.path.startswith("/v2/nix/broken/manifests/")]
    assert manifests == []
    assert inspect(registry.host, "nix/broken:1", check=False).returncode != 0


def test_unreachable_registry(tmp_path: Path) -> None:
    image = make_image(tmp_path / "img", [{"/a": b"a"}])
    host = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(NixlayerError) as info:
        push(image, host, "nix/nowhere:1")
    assert f"cannot reach registry {host}" in str(info.value)
    assert time.monotonic() - start < 5


def test_rejects_unknown_manifest_media_type(registry, tmp_path: Path) -> None:
    image = make_image(tmp_path / "img", [{"/a": b"m"}])
    with pytest.raises(NixlayerError, match="manifest media type"):
        push_image(f"{registry.host}/nix/mt:1", image.manifest, "application/json", image.config, image.layers)


# --- authentication -----------------------------------------------------------------------------


def test_basic_auth_push(auth_registry, tmp_path: Path) -> None:
    image = make_image(tmp_path / "img", BASE_LAYERS)
    auth = write_auth(tmp_path / "auth.json", auth_registry.host, AUTH_USER, AUTH_PASSWORD, prefix="https://")
    messages: list[str] = []
    result = push(image, auth_registry.host, "nix/private:1", auth_file=auth, log=messages.append)
    assert result.uploaded == 4
    assert not any(AUTH_PASSWORD in m for m in messages)
    assert AUTH_PASSWORD not in repr(result)
    info = skopeo(
        "inspect", "--tls-verify=false", f"--creds={AUTH_USER}:{AUTH_PASSWORD}",
        f"docker://{auth_registry.host}/nix/private:1",
    )
    assert json.loads(info.stdout)["Layers"] == image.layer_digests


def test_wrong_credentials(auth_registry, tmp_path: Path) -> None:
    image = make_image(tmp_path / "img", [{"/a": b"a"}])
    wrong = "Wr0ng-Pa55-xyz"
    auth = write_auth(tmp_path / "auth.json", auth_registry.host, AUTH_USER, wrong)
    with pytest.raises(NixlayerError) as info:
        push(image, auth_registry.host, "nix/private:2", auth_file=auth)
    message = str(info.value)
    assert message.startswith(f"authentication failed for {auth_registry.host} (repository nix/private)")
    encoded = base64.b64encode(f"{AUTH_USER}:{wrong}".encode()).decode()
    for secret in (wrong, encoded):
        assert secret not in message and secret not in repr(info.value)
    assert info.value.__cause__ is None or wrong not in str(info.value.__cause__)


def test_no_credentials(auth_registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    image = make_image(tmp_path / "img", [{"/a": b"a"}])
    with pytest.raises(NixlayerError, match="authentication failed .*no credentials found"):
        push(image, auth_registry.host, "nix/private:3")


def test_credentials_repr_hides_password() -> None:
    creds = Credentials("bob", "hunter2")
    assert "hunter2" not in repr(creds) and "hunter2" not in f"{creds}"


def test_bearer_token_push_and_mount(token_registry, tmp_path: Path) -> None:
    server, tokens = token_registry
    image = make_image(tmp_path / "img", BASE_LAYERS)
    auth = write_auth(tmp_path / "auth.json", server.host, AUTH_USER, AUTH_PASSWORD)
    messages: list[str] = []
    result = push(image, server.host, "nix/tok:1", auth_file=auth, log=messages.append)
    assert result.uploaded == 4
    assert tokens.seen and all(req["credentials"] for req in tokens.seen)
    assert tokens.seen[-1]["scopes"] == ["repository:nix/tok:pull,push"]

    mark = server.mark()
    result = push(image, server.host, "nix/tok2:1", auth_file=auth, mount_from=["nix/tok"])
    assert tokens.seen[-1]["scopes"] == ["repository:nix/tok2:pull,push", "repository:nix/tok:pull"]
    assert sorted(server.blob_activity("nix/tok2", mark)["mounted"]) == sorted(
        image.layer_digests + [image.config.digest]
    )
    assert result.mounted == 4
    assert not any(AUTH_PASSWORD in m for m in messages)
    info = skopeo(
        "inspect", "--tls-verify=false", f"--creds={AUTH_USER}:{AUTH_PASSWORD}", f"docker://{server.host}/nix/tok2:1"
    )
    assert json.loads(info.stdout)["Layers"] == image.layer_digests


def test_bearer_mount_from_unreadable_repository_falls_back_to_upload(token_registry, tmp_path: Path) -> None:
    server, tokens = token_registry
    image = make_image(tmp_path / "img", [{"/secret-source.txt": b"no pull on the source"}])
    auth = write_auth(tmp_path / "auth.json", server.host, AUTH_USER, AUTH_PASSWORD)
    mark = server.mark()
    result = push(image, server.host, "nix/tok3:1", auth_file=auth, mount_from=["forbidden/src"])
    assert result.uploaded == 2 and result.mounted == 0
    activity = server.blob_activity("nix/tok3", mark)
    assert sorted(activity["uploaded"]) == sorted(image.layer_digests + [image.config.digest])
    assert "repository:forbidden/src:pull" in tokens.seen[-1]["scopes"]
    refused = [r for r in server.requests()[mark:] if r.method == "POST" and "mount" in r.query]
    assert refused and all(r.status == 401 for r in refused)


def test_bearer_token_wrong_credentials(token_registry, tmp_path: Path) -> None:
    server, _ = token_registry
    image = make_image(tmp_path / "img", [{"/a": b"a"}])
    auth = write_auth(tmp_path / "auth.json", server.host, AUTH_USER, "not-the-Pa55word")
    with pytest.raises(NixlayerError) as info:
        push(image, server.host, "nix/tok:2", auth_file=auth)
    assert str(info.value).startswith(f"authentication failed for {server.host} (repository nix/tok)")
    assert "not-the-Pa55word" not in str(info.value)
