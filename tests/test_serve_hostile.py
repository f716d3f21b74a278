"""`hone serve` against hostile or careless input: request paths outside adapter_roots, broken run configs,
API keys on the command line, and a server started without any key."""

from __future__ import annotations

import os
import shutil

import httpx
import pytest
from conftest import serve_app
from test_serve import config, make_adapter
from typer.testing import CliRunner

from hone.api.app import create_app
from hone.cli import app as cli
from hone.cli.serve import COMMAND_LINE_KEY_WARNING, gather_api_keys, open_server_warning
from hone.errors import HoneError
from hone.serve.adapters import NO_ROOTS, PATH_REFUSED

ADMIN = {"Authorization": "Bearer sk-operator"}  # a --api-key key: the operator's, admin of the default project


@pytest.fixture(scope="module")
def layout(tiny_model_dir, tmp_path_factory):
    """An adapter root holding a real adapter and a broken run, a real adapter outside it, and escaping symlinks."""
    top = tmp_path_factory.mktemp("hostile")
    root = top / "roots"
    make_adapter(root / "good", str(tiny_model_dir), seed=5)
    outside = make_adapter(top / "outside", str(tiny_model_dir), seed=6)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "to-etc").symlink_to("/etc", target_is_directory=True)
    for name, text in [("bad-yaml", "base_model: [unclosed\n  secret: s3cr3t-fragment"),
                       ("list-yaml", "- s3cr3t-fragment\n- two\n")]:
        shutil.copytree(root / "good", root / name)
        (root / name / "config.yaml").write_text(text)
    shutil.copytree(root / "good", root / "linked-files")  # an adapter whose weights are a file outside the root
    (root / "linked-files" / "adapter" / "adapter_model.safetensors").unlink()
    (root / "linked-files" / "adapter" / "adapter_model.safetensors").symlink_to(
        outside / "adapter" / "adapter_model.safetensors")
    return {"top": top, "root": root, "outside": outside}


@pytest.fixture(scope="module")
def guarded(tiny_model_dir, layout, tmp_path_factory):
    settings = config(tiny_model_dir, {}, tmp_path_factory.mktemp("db"), adapter_roots=[layout["root"]])
    with serve_app(create_app(settings, api_keys=["sk-operator"])) as url:
        yield url


def load(url: str, name: str, path: str) -> httpx.Response:
    return httpx.post(url + "/load_lora_adapter", json={"lora_name": name, "lora_path": path}, headers=ADMIN,
                      timeout=60)


def test_request_paths_outside_adapter_roots_all_get_one_answer_naming_no_path(guarded, layout):
    root, top = layout["root"], layout["top"]
    hostile = ["/etc", "../..", "/proc/self/environ", "/proc/self/cwd", str(root / "escape"), "escape", "to-etc",
               str(root / "missing"), "missing", str(layout["outside"]), "../outside", f"{root}/../outside",
               "good\x00", str(root / "good" / "adapter" / "adapter_config.json"), str(root / "bad-yaml"),
               "list-yaml", "linked-files", "."]
    replies = [load(guarded, f"h{i}", path) for i, path in enumerate(hostile)]
    assert {reply.status_code for reply in replies} == {400}
    bodies = {reply.text for reply in replies}
    assert len(bodies) == 1, bodies
    error = replies[0].json()["error"]
    assert error["message"] == PATH_REFUSED and error["param"] == "lora_path"
    body = bodies.pop()
    for leak in [str(top), "/proc", "/etc", str(os.getpid()), "environ", "s3cr3t", "exist", "yaml"]:
        assert leak not in body
    names = {model["id"] for model in httpx.get(guarded + "/models", headers=ADMIN).json()["data"]}
    assert names == {"tiny"}


def test_an_adapter_under_the_roots_loads_by_absolute_or_relative_path(guarded, layout):
    assert load(guarded, "good-abs", str(layout["root"] / "good")).status_code == 200
    assert load(guarded, "good-rel", "good/adapter").status_code == 200
    reply = httpx.post(guarded + "/chat/completions", headers=ADMIN, timeout=60, json={
        "model": "good-rel", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2})
    assert reply.status_code == 200
    models = httpx.get(guarded + "/models", headers=ADMIN).json()["data"]
    assert {model["id"]: model["root"] for model in models} == {"tiny": "tiny", "good-abs": "good-abs",
                                                                  "good-rel": "good-rel"}
    assert str(layout["top"]) not in httpx.get(guarded + "/models", headers=ADMIN).text


def test_without_adapter_roots_no_request_path_loads(tiny_model_dir, layout, tmp_path):
    with serve_app(create_app(config(tiny_model_dir, {}, tmp_path), api_keys=["sk-operator"])) as url:
        reply = load(url, "good", str(layout["root"] / "good"))
    assert reply.status_code == 400 and reply.json()["error"]["message"] == NO_ROOTS
    assert "adapter_roots" in NO_ROOTS and "serve.yaml" in NO_ROOTS


@pytest.mark.parametrize("broken", ["bad-yaml", "list-yaml"])
def test_a_broken_run_config_in_the_servers_own_config_names_the_file(tiny_model_dir, layout, tmp_path, broken):
    with pytest.raises(HoneError) as error:
        create_app(config(tiny_model_dir, {"legal": layout["root"] / broken}, tmp_path))
    assert error.value.message.startswith(f"adapters.legal: {(layout['root'] / broken).resolve() / 'config.yaml'}: ")
    assert ("not valid YAML" if broken == "bad-yaml" else "expected a mapping") in error.value.message


def test_api_keys_come_from_a_file_and_the_environment(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-one\n\n  sk-two  \n")
    assert gather_api_keys(["sk-cli"], keys, {"HONE_API_KEYS": "sk-env1, sk-env2,"}) == \
        ["sk-cli", "sk-one", "sk-two", "sk-env1", "sk-env2"]
    assert gather_api_keys([], None, {}) == []
    with pytest.raises(HoneError, match="--api-key-file"):
        gather_api_keys([], tmp_path / "absent.txt", {})


def test_a_key_on_the_command_line_is_warned_about(tmp_path):
    result = CliRunner().invoke(cli, ["serve", "--api-key", "sk-visible", "--config", str(tmp_path / "absent.yaml")])
    assert result.exit_code != 0  # stops at the missing config, before any model loads
    assert COMMAND_LINE_KEY_WARNING in result.stderr
    assert "--api-key-file" in COMMAND_LINE_KEY_WARNING and "HONE_API_KEYS" in COMMAND_LINE_KEY_WARNING
    quiet = CliRunner().invoke(cli, ["serve", "--config", str(tmp_path / "absent.yaml")])
    assert COMMAND_LINE_KEY_WARNING not in quiet.stderr


def test_a_server_without_keys_warns_louder_when_others_can_reach_it():
    assert open_server_warning("0.0.0.0", has_keys=True) is None
    for host in ["127.0.0.1", "localhost", "::1", "127.0.0.2"]:
        warning = open_server_warning(host, has_keys=False)
        assert "no API key" in warning and "ANYONE" not in warning
    for host in ["0.0.0.0", "::", "192.168.1.20", "myhost.example.com"]:
        warning = open_server_warning(host, has_keys=False)
        assert "ANYONE WHO CAN REACH THIS PORT can use and fine-tune its models" in warning and host in warning
