"""The embedded Ray instance keeps to itself: its own temp folder (short enough for
Unix socket paths), and workers that look a cluster up find the instance they belong to."""

from __future__ import annotations

import os
import stat

import pytest


def test_each_work_folder_gets_its_own_short_ray_temp_folder(tmp_path):
    from bratslab.cluster import ray_temp_dir

    a = ray_temp_dir(tmp_path / "home-a", root=tmp_path)
    b = ray_temp_dir(tmp_path / "home-b", root=tmp_path)
    assert a != b and a == ray_temp_dir(tmp_path / "home-a", root=tmp_path)
    assert a.name.startswith(f"bratslab-ray-{os.getuid()}-")
    assert stat.S_IMODE(a.stat().st_mode) == 0o700
    # Under /tmp a Ray session's socket path stays well below the 107-byte limit.
    real = ray_temp_dir(tmp_path / "home-a")
    socket = real / "session_2026-12-07_02-14-38_123456_1234567" / "sockets" / "plasma_store"
    assert len(str(socket)) < 107


def test_a_temp_folder_that_is_not_ours_is_refused(tmp_path):
    from bratslab.cluster import ray_temp_dir

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = ray_temp_dir(tmp_path / "h", root=tmp_path)
    target.rmdir()
    target.symlink_to(elsewhere)  # planted by someone: Ray would write its sockets there
    with pytest.raises(RuntimeError, match="not owned by this user"):
        ray_temp_dir(tmp_path / "h", root=tmp_path)


def test_the_worker_setup_hook_names_an_importable_function():
    # Ray imports it by this dotted name in every worker of the embedded instance; what it
    # does there is checked on a real instance (tests/integration/test_train_ray.py).
    from bratslab.cluster import WORKER_SETUP_HOOK, pin_worker_address

    module, func = WORKER_SETUP_HOOK.rsplit(".", 1)
    assert getattr(__import__(module, fromlist=[func]), func) is pin_worker_address
