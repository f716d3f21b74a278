"""API keys: shown once, stored hashed, verified in constant time, revocable from the CLI."""

from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from hone.api.keys import KeyStore
from hone.cli import app
from hone.errors import HoneError

pytest_plugins = ["store_fixtures"]  # the db_url fixture: SQLite, and PostgreSQL when configured


def test_a_created_key_verifies_and_only_its_hash_is_stored(db_url):
    store = KeyStore(db_url)
    assert not store.has_keys()
    key = store.create("support-app")
    assert key.startswith("hone-") and len(key) > 40
    assert store.has_keys()
    assert store.verify(key)
    assert store.verify(key)  # the second check is served from the in-process memo
    assert not store.verify(key[:-1] + ("A" if key[-1] != "A" else "B"))
    assert not store.verify("")
    assert not store.verify("sk-" + key)
    with store.engine.connect() as db:
        stored = db.execute(text("SELECT * FROM api_keys")).all()
    assert stored and all(key not in str(column) for column in stored[0])
    (listed,) = store.list()
    assert listed["name"] == "support-app" and key.startswith(listed["prefix"]) and not listed["revoked"]
    assert "T" in listed["created_at"] and listed["created_at"].endswith("+00:00")


def test_a_second_store_on_the_same_database_sees_the_key(db_url):
    key = KeyStore(db_url).create("a")
    assert KeyStore(db_url).verify(key)


def test_revoked_keys_are_refused_and_names_can_be_reused(db_url):
    store = KeyStore(db_url)
    old = store.create("app")
    assert store.verify(old)
    with pytest.raises(HoneError, match="already exists"):
        store.create("app")
    store.revoke("app")
    assert not store.verify(old)
    assert not store.has_keys()
    new = store.create("app")
    assert store.verify(new) and not store.verify(old)
    assert [k["revoked"] for k in store.list()] == [True, False]
    with pytest.raises(HoneError, match="no active API key named 'ghost'"):
        store.revoke("ghost")


def test_a_revocation_by_another_process_takes_effect_at_once(db_url):
    server = KeyStore(db_url)
    key = server.create("app")
    assert server.verify(key)
    KeyStore(db_url).revoke("app")  # as `hone keys revoke` would, through its own store
    assert not server.verify(key)


def test_bad_names_are_refused(db_url):
    for name in ("", "has space", "-leading-dash", "x" * 65):
        with pytest.raises(HoneError, match="is not allowed"):
            KeyStore(db_url).create(name)


def test_verify_from_many_threads(db_url):
    store = KeyStore(db_url)
    keys = [store.create(f"client-{i}") for i in range(4)]
    results: list[bool] = []
    threads = [threading.Thread(target=lambda k=k: results.extend(store.verify(k) for _ in range(10))) for k in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 40 and all(results)


def test_cli_create_list_revoke(db_url):
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "ci", "--db", db_url, "--json"])
    assert created.exit_code == 0, created.output
    key = json.loads(created.stdout)["key"]
    assert KeyStore(db_url).verify(key)
    listed = json.loads(runner.invoke(app, ["keys", "list", "--db", db_url, "--json"]).stdout)
    assert [k["name"] for k in listed["keys"]] == ["ci"] and "key" not in listed["keys"][0]
    assert runner.invoke(app, ["keys", "revoke", "ci", "--db", db_url, "--json"]).exit_code == 0
    assert not KeyStore(db_url).verify(key)
    failed = runner.invoke(app, ["keys", "revoke", "ci", "--db", db_url])
    assert isinstance(failed.exception, HoneError)


def test_default_database_lives_in_hone_home(tmp_path):
    KeyStore().create("default")
    assert (tmp_path / "hone-home" / "hone.db").is_file()
