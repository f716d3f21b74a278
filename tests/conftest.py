"""Shared fixtures: a tiny random-initialised Llama with a ChatML tokenizer, built inside the test run."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_model(folder: Path, seed: int = 0, context: int = 512) -> Path:
    """Write a tiny Llama (2 layers, hidden 64, `context` positions) and a byte-level BPE tokenizer to `folder`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["the quick brown fox jumps over the lazy dog", '{"name": "value", "id": 123}',
              "user assistant system hello world refund order"] * 20
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        bos_token="<|im_start|>", unk_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(folder)

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def build_learnable_model(folder: Path, seed: int = 0) -> Path:
    """The tiny model with 25x larger embeddings: the random tiny model's logits are too flat for a LoRA adapter to
    make one answer likely (its tied output layer and final norm stay frozen) and its greedy replies are often empty;
    this one's are not."""
    import torch
    from transformers import AutoModelForCausalLM

    build_tiny_model(folder, seed=seed)
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(25)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Path of a tiny Llama model folder usable anywhere a model name is accepted."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def shared_home() -> Path:
    """The user's real HONE_HOME (or $HONE_E2E_HOME), where the bundled model is de-quantized once for every test
    that uses it."""
    return Path(os.environ.get("HONE_E2E_HOME", str(Path.home() / ".cache" / "hone")))


@pytest.fixture
def shared_model_cache(monkeypatch) -> Path:
    """Tests on the real bundled model share its cache instead of converting it per test."""
    monkeypatch.setenv("HONE_HOME", str(shared_home()))
    return shared_home()


@pytest.fixture(autouse=True)
def isolated_hone_home(tmp_path, monkeypatch):
    """Every test gets its own HONE_HOME unless it uses the shared real-model cache."""
    monkeypatch.setenv("HONE_HOME", str(tmp_path / "hone-home"))


def _wait_until_listening(port: int, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"test server did not start on port {port}")


@contextmanager
def serve_app(app) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free 127.0.0.1 port in a background thread; yields its /v1 URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    _wait_until_listening(port)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


def _postgres_bin_dir() -> Path | None:
    """The newest PostgreSQL server's binaries: Debian's /usr/lib/postgresql/N/bin, else initdb on PATH."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if found:
        return Path(max(found, key=lambda path: int(Path(path).parts[-3]))).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server for the test session: the SQLAlchemy URL of its empty database `hone`.

    Its user `hone` is a superuser, so tests may create and drop databases. Skipped when no server binaries exist.
    """
    pytest.importorskip("psycopg", reason="psycopg is not installed: `make install` installs hone[postgres]")
    bin_dir = _postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): `make install` installs the postgresql package")
    from sqlalchemy import create_engine, text

    folder = Path(tempfile.mkdtemp(prefix="hone-pg-"))  # short: the unix socket's path must fit in 107 bytes
    run_as = {}
    if os.geteuid() == 0:  # initdb refuses to run as root
        nobody = pwd.getpwnam("nobody")
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
        run_as = {"user": nobody.pw_uid, "group": nobody.pw_gid}
    data, log = folder / "data", folder / "server.log"

    def pg(program: str, *args: str) -> None:
        done = subprocess.run([str(bin_dir / program), *args], cwd=folder, capture_output=True, text=True, **run_as)
        if done.returncode:
            server_log = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr or done.stdout}\n{server_log}")

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    try:
        pg("initdb", "-D", str(data), "-U", "hone", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync")
        # fsync off: a test server's data need not survive a power cut, and its writes get much faster.
        pg("pg_ctl", "-D", str(data), "-l", str(log), "-w", "-o",
           f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        admin = create_engine(f"postgresql+psycopg://hone@127.0.0.1:{port}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text("CREATE DATABASE hone"))
        admin.dispose()
        yield f"postgresql+psycopg://hone@127.0.0.1:{port}/hone"
    finally:
        if (data / "postmaster.pid").exists():
            pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")  # Debian's, driven by Playwright


@pytest.fixture(scope="session")
def browser():
    """One headless Debian Chromium for the whole run."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    """A fresh browser tab with its own cookies (CSP bypassed so tests can inject axe; the pages never need it)."""
    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert errors == [], f"the page's scripts failed: {errors}"
