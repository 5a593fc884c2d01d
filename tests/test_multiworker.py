"""Two MultiWorkerMirroredStrategy workers on 127.0.0.1 (see multiworker_worker.py)."""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(__file__)


def free_ports(count):
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def launch(out, *extra):
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = dict(
            os.environ,
            TF_CONFIG=json.dumps(config),
            TF_CPP_MIN_LOG_LEVEL="3",
            CUDA_VISIBLE_DEVICES="",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, os.path.join(HERE, "multiworker_worker.py"), str(out), *extra],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def finish(procs, timeout=300):
    try:
        return [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()


def worker_state(path, index):
    data = np.load(path / f"worker{index}.npz")
    return [data[k] for k in data.files]


@pytest.mark.slow
def test_two_workers_train_ssam_f_to_identical_weights_and_masks(tmp_path):
    procs = launch(tmp_path)
    outputs = finish(procs)
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0 and "DONE" in stdout, stderr[-3000:]
        assert stdout.split()[-1] == "3"  # mask updates: before training + 2 epochs
    first, second = worker_state(tmp_path, 0), worker_state(tmp_path, 1)
    assert len(first) == len(second) > 4
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    masks = [v for v in first if v.shape and set(np.unique(v)) <= {0, 1}]
    assert masks  # the masks are among the compared variables
    # Both workers together train exactly what one process trains alone.
    single = tmp_path / "single"
    single.mkdir()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    done = subprocess.run(
        [sys.executable, os.path.join(HERE, "multiworker_worker.py"), str(single)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and "DONE 0 3" in done.stdout, done.stderr[-3000:]
    alone = worker_state(single, 0)
    assert len(alone) == len(first)
    start = [np.asarray(v) for v in alone]
    for a, b in zip(first, start):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_killed_worker_resumes_with_backup_and_restore(tmp_path):
    """Kill worker 1 mid-epoch, restart both workers: the resumed run ends
    exactly where an uninterrupted run does (weights, optimizer, masks)."""
    reference, resumed, backup = tmp_path / "ref", tmp_path / "resumed", tmp_path / "backup"
    for folder in (reference, resumed):
        folder.mkdir()
    for p, (stdout, stderr) in zip(*_run(launch(reference, "4"))):
        assert p.returncode == 0 and "DONE" in stdout, stderr[-3000:]

    procs = launch(resumed, "4", str(backup), "2")
    stdout, stderr = procs[1].communicate(timeout=300)
    assert procs[1].returncode == -signal.SIGKILL and "KILLED" in stdout, stderr[-3000:]
    procs[0].kill()  # blocked in a collective with its dead peer
    procs[0].communicate()
    assert not (resumed / "worker0.npz").exists()

    for p, (stdout, stderr) in zip(*_run(launch(resumed, "4", str(backup)))):
        assert p.returncode == 0 and "DONE" in stdout, stderr[-3000:]
        assert "EPOCHS 2 3" in stdout  # epochs 0-1 came from the backup
        # Mask updates at the starts of epochs 2 and 3 only: the restored
        # mask is not recomputed before the first step.
        assert stdout.split()[-1] == "2"
    for index in range(2):
        for a, b in zip(worker_state(reference, index), worker_state(resumed, index)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _run(procs):
    return procs, finish(procs)
