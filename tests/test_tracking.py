"""MLflow tracking of training runs, against real SQLite stores under the test's HONE_HOME."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from hone.errors import HoneError
from hone.home import hone_home
from hone.train.tracking import Tracker, TrackingConfig, mlflow_client

PARAMS = {"model": "tiny", "training": {"lr": 1e-4, "targets": ["q_proj", "v_proj"], "extra": {}}}


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """A migrated, empty MLflow SQLite file; creating one costs seconds, copying it costs nothing."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow_client(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def client(empty_store):
    """A client on the default store `$HONE_HOME/mlflow/mlflow.db`, seeded from the empty template."""
    folder = hone_home() / "mlflow"
    folder.mkdir()
    shutil.copy(empty_store, folder / "mlflow.db")
    return mlflow_client(f"sqlite:///{folder / 'mlflow.db'}")


def start(**overrides) -> Tracker:
    tracker = Tracker.start(TrackingConfig(), run_name="run-1", params=PARAMS, tags={"hone.run_dir": "/runs/1"},
                            **overrides)
    assert isinstance(tracker, Tracker)
    return tracker


def test_params_are_flattened_and_long_values_truncated(client):
    many = {f"k{i}": i for i in range(150)}  # more than one log_batch call holds
    tracker = Tracker.start(TrackingConfig(), "run-1", {**PARAMS, "many": many, "notes": "x" * 7000},
                            {"hone.run_dir": "/runs/1"})
    tracker.finish()
    run = client.get_run(tracker.run_id)
    assert run.info.run_name == "run-1"
    assert run.data.params["model"] == "tiny"
    assert run.data.params["training.lr"] == "0.0001"
    assert run.data.params["training.targets"] == '["q_proj", "v_proj"]'
    assert run.data.params["training.extra"] == "{}"
    assert run.data.params["many.k149"] == "149"
    assert len(run.data.params["notes"]) == 6000 and run.data.params["notes"].endswith("...")
    assert run.data.tags["hone.run_dir"] == "/runs/1"
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "hone"
    assert run.info.artifact_uri.startswith((hone_home() / "mlflow" / "artifacts").as_uri())


def test_every_step_is_written_in_order_in_batches(client):
    tracker = start()
    for step in range(45):
        tracker.log_step({"train_loss": 10.0 - step / 10, "eval_loss": 5.0 if step % 10 == 0 else None}, step)
    assert len(client.get_metric_history(tracker.run_id, "train_loss")) == 40  # two full batches so far
    tracker.finish()
    history = client.get_metric_history(tracker.run_id, "train_loss")
    assert [m.step for m in history] == list(range(45))
    assert [m.value for m in history] == pytest.approx([10.0 - step / 10 for step in range(45)])
    assert [m.step for m in client.get_metric_history(tracker.run_id, "eval_loss")] == [0, 10, 20, 30, 40]


def test_summary_numbers_become_metrics_and_text_becomes_tags(client):
    with start() as tracker:
        tracker.log_step({"train_loss": 2.0}, 7)
        tracker.log_summary({"train_loss": 1.5, "wall_time_s": 12, "best_step": None, "stopped_early": False,
                             "fingerprints": {"dataset": "sha256:abc"}, "code_version": "0.1.0"})
    run = client.get_run(tracker.run_id)
    assert run.data.metrics == {"train_loss": 1.5, "wall_time_s": 12.0}
    assert client.get_metric_history(tracker.run_id, "wall_time_s")[0].step == 7
    assert run.data.tags["fingerprints.dataset"] == "sha256:abc"
    assert run.data.tags["code_version"] == "0.1.0"
    assert run.data.tags["stopped_early"] == "False"
    assert "best_step" not in run.data.tags


def test_adapter_folder_round_trips_through_artifacts(client, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(b"\x00weights\xff")
    with start() as tracker:
        tracker.log_artifacts(adapter, "adapter")
    listed = {Path(item.path).name for item in client.list_artifacts(tracker.run_id, "adapter")}
    assert listed == {"adapter_config.json", "adapter_model.safetensors"}
    copy = Path(client.download_artifacts(tracker.run_id, "adapter", str(tmp_path / "download")))
    assert (copy / "adapter_model.safetensors").read_bytes() == b"\x00weights\xff"


def test_disabled_tracking_writes_nothing(tmp_path):
    with Tracker.start(TrackingConfig(enabled=False), "run-1", PARAMS, {}) as tracker:
        tracker.log_step({"train_loss": 1.0}, 0)
        tracker.log_summary({"train_loss": 1.0})
        tracker.log_artifacts(tmp_path, "adapter")
    assert tracker.run_id is None
    assert not (hone_home() / "mlflow").exists()


def test_an_exception_marks_the_run_failed_and_keeps_its_steps(client):
    with pytest.raises(RuntimeError, match="out of memory"), start() as tracker:
        tracker.log_step({"train_loss": 3.0}, 0)
        raise RuntimeError("out of memory")
    assert client.get_run(tracker.run_id).info.status == "FAILED"
    assert len(client.get_metric_history(tracker.run_id, "train_loss")) == 1


def test_resume_continues_the_same_run(client, caplog):
    first = start()
    for step in range(10):
        first.log_step({"train_loss": float(step)}, step)
    first.finish("KILLED")

    changed = {**PARAMS, "training": {**PARAMS["training"], "lr": 5e-4}, "resumed_from": "step-10"}
    second = Tracker.start(TrackingConfig(), "run-1", changed, {}, run_id=first.run_id)
    assert client.get_run(first.run_id).info.status == "RUNNING"
    for step in range(10, 25):
        second.log_step({"train_loss": float(step)}, step)
    second.finish()

    run = client.get_run(first.run_id)
    assert second.run_id == first.run_id and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(first.run_id, "train_loss")] == list(range(25))
    assert run.data.params["training.lr"] == "0.0001" and run.data.params["resumed_from"] == "step-10"
    assert "training.lr" in caplog.text
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_resuming_an_unknown_run_says_so(client):
    with pytest.raises(HoneError, match="cannot be resumed"):
        start(run_id="0" * 32)


def test_an_explicit_uri_and_experiment_are_honoured(tmp_path):
    uri = f"sqlite:///{tmp_path / 'team.db'}"
    with Tracker.start(TrackingConfig(uri=uri, experiment="support-bot"), "run-1", PARAMS, {}) as tracker:
        tracker.log_step({"train_loss": 1.0}, 0)
    run = mlflow_client(uri).get_run(tracker.run_id)
    assert mlflow_client(uri).get_experiment(run.info.experiment_id).name == "support-bot"
    assert not (hone_home() / "mlflow" / "mlflow.db").exists()


def test_unknown_config_keys_are_rejected():
    with pytest.raises(ValidationError, match="experimnt"):
        TrackingConfig(experimnt="x")


def test_tracking_never_touches_the_network(empty_store, tmp_path):
    home = tmp_path / "home"
    (home / "mlflow").mkdir(parents=True)
    shutil.copy(empty_store, home / "mlflow" / "mlflow.db")
    script = textwrap.dedent("""
        import socket
        attempts = []
        real_connect = socket.socket.connect
        def refuse_lookup(host, *args, **kwargs):
            attempts.append(host)
            raise OSError("network disabled in test")
        def refuse_connect(self, address):
            if self.family != socket.AF_UNIX:
                attempts.append(address)
                raise OSError("network disabled in test")
            return real_connect(self, address)
        socket.getaddrinfo, socket.socket.connect = refuse_lookup, refuse_connect
        from hone.train.tracking import Tracker, TrackingConfig
        with Tracker.start(TrackingConfig(), "run-1", {"lr": 1e-4}, {}) as tracker:
            tracker.log_step({"train_loss": 1.0}, 0)
        print(attempts)
    """)
    # a bare environment: mlflow already stays quiet when it sees pytest or CI variables
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "HONE_HOME": str(home)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
