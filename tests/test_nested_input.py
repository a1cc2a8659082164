"""Values checked all the way down (issue 18, class 5): the image config against the image
spec's types inside its objects too, contents that are not a list or name a store path twice,
an image name too long once engines prefix it, a batch file that is not UTF-8. Each is one line
before any work, nothing written; a config of the right shapes loads and podman reads it."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import SLOW, first_fast, run_pipelines
from test_user_errors import assert_refused, build_image, error_lines, hello  # noqa: F401 - the fixture


@pytest.mark.parametrize("config, line", first_fast([
    ({"Labels": {"version": 2}}, "image config field Labels: 'version' must be a string, not 2"),
    ({"Labels": {"a": None}}, "image config field Labels: 'a' must be a string, not null"),
    ({"Volumes": {"/data": "yes"}}, "image config field Volumes: '/data' must be an empty JSON object, not \"yes\""),
    ({"Volumes": ["/data"]}, "image config field Volumes must be a JSON object, not [\"/data\"]"),
    ({"ExposedPorts": {"80/tcp": True}}, "image config field ExposedPorts: '80/tcp' must be an empty JSON object,"
                                         " not true"),
    ({"ExposedPorts": {"http": {}}}, "image config field ExposedPorts: 'http' is not a port: use PORT, PORT/tcp,"
                                     " PORT/udp or PORT/sctp, such as \"8080/tcp\""),
    ({"Healthcheck": {"Test": "curl -f localhost"}}, "image config field Healthcheck: 'Test' must be a list of"
                                                     " strings, not \"curl -f localhost\""),
    ({"Healthcheck": {"Test": ["CMD", "true"], "Interval": "30s"}},
     "image config field Healthcheck: 'Interval' must be a whole number of nanoseconds, not \"30s\""),
    ({"Healthcheck": {"Test": ["NONE"], "Retries": -1}},
     "image config field Healthcheck: 'Retries' must be a whole number, not -1"),
    ({"Healthcheck": {"Command": ["true"]}}, "unknown field 'Command' in image config field Healthcheck: use Test,"
                                            " Interval, Timeout, StartPeriod, StartInterval, Retries"),
    ({"ArgsEscaped": "yes"}, "image config field ArgsEscaped must be true or false, not \"yes\""),
    ({"Env": ["A=1", 2]}, "image config field Env must be a list of strings, not [\"A=1\", 2]"),
    ({"Labels": {"a": "\ud800"}}, "image config holds a string that is not valid Unicode (a lone surrogate such as"
                                  " \"\\ud800\"): give its text as UTF-8"),
]))
def test_a_config_of_the_wrong_types_inside_is_refused_before_any_work(tmp_path, hello, config, line):
    run = build_image(tmp_path, "--contents", json.dumps([hello]), "--config", json.dumps(config))
    assert_refused(tmp_path, run, 35, line)


def test_a_config_of_the_spec_shapes_loads(tmp_path, hello):
    config = {"Labels": {"version": "2"}, "Volumes": {"/data": {}}, "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
              "Healthcheck": {"Test": ["CMD", "/bin/hello"], "Interval": 30_000_000_000, "Retries": 3},
              "ArgsEscaped": False, "Cmd": ["/bin/hello"]}
    run = build_image(tmp_path, "--tag", "shapes", "--contents", json.dumps([hello]), "--config", json.dumps(config))
    assert run.returncode == 0, run.stderr
    subprocess.run(["podman", "load", "-i", str(tmp_path / "x.tar")], check=True, capture_output=True)
    shown = json.loads(subprocess.run(["podman", "image", "inspect", "localhost/x:shapes"], check=True,
                                      capture_output=True, text=True).stdout)[0]
    assert shown["Labels"] == {"version": "2"} and sorted(shown["Config"]["ExposedPorts"]) == ["53/udp", "8080/tcp"]
    assert shown["Healthcheck"]["Test"] == ["CMD", "/bin/hello"] and shown["Healthcheck"]["Retries"] == 3


@SLOW
def test_contents_given_as_an_object_are_refused(tmp_path, hello):
    run = build_image(tmp_path, "--contents", json.dumps({hello: True}))
    assert_refused(tmp_path, run, 40, "invalid parameter: --contents must be a JSON list of store paths such as"
                                      f" '[\"/nix/store/...-hello\"]', not '{json.dumps({hello: True})}'")


@SLOW
def test_a_store_path_given_twice_is_named(tmp_path, hello):
    run = build_image(tmp_path, "--contents", json.dumps([hello, hello]))
    assert_refused(tmp_path, run, 35, f"--contents names {hello} twice: give each store path once")


@pytest.mark.parametrize("name, full", first_fast([("a" * 240, 258), ("team/" + "a" * 245, 260)]))
def test_an_image_name_too_long_once_engines_prefix_it_is_refused(tmp_path, hello, name, full):
    run = run_pipelines(["BuildImage", "--name", name, "--contents", json.dumps([hello]),
                         "--output", str(tmp_path / "x.tar")], tmp_path / "store")
    prefix = "docker.io/library/" if "/" not in name else "docker.io/"
    assert_refused(tmp_path, run, 35, f"image name is {len(name)} characters long, {full} as container engines name"
                                      f" it ({prefix}...); at most 255 are allowed")


@SLOW
def test_a_batch_file_that_is_not_utf8_is_one_line(tmp_path):
    batch = tmp_path / "batch.toml"
    batch.write_bytes(b'[[image]]\nname = "caf\xe9"\n')
    run = run_pipelines(["BuildImages", "--batch-file", str(batch)], tmp_path / "store")
    assert run.returncode != 0
    assert error_lines(run) == [f"nixlayer: error: {batch}: not valid TOML: byte 22 is not UTF-8 (TOML files are"
                                " UTF-8)"]
