"""A checkpoint or finished run written before certa gained a setting stays resumable while it is left at its default."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from certa.errors import InputError
from certa.methods.grace import GraceConfig
from certa.methods.trained import _finished_as
from certa.models.artifact import ARTIFACT_FILE
from certa.training.trainer import CHECKPOINT_DIR, _resume


def saved_before_probe_c(config: GraceConfig) -> dict:
    """The config as a certa without the ``probe_c`` setting would have stored it."""
    stored = json.loads(config.model_dump_json())
    del stored["probe_c"]
    return stored


def test_a_setting_missing_from_a_saved_config_counts_as_its_default():
    config = GraceConfig(seed=3)
    old = saved_before_probe_c(config)
    assert config.differences(old) == []
    assert GraceConfig(seed=3, probe_c="cv").differences(old) == ["probe_c"]
    assert GraceConfig(seed=3, lr=1e-3).differences(old) == ["lr"]
    assert GraceConfig(seed=3, lr=1e-3, save_every=7).differences(old, ignore={"save_every"}) == ["lr"]


def _checkpoint(tmp_path, stored: dict):
    step = tmp_path / CHECKPOINT_DIR / "step-4"
    step.mkdir(parents=True)
    (step / "step.json").write_text(json.dumps({"step": 4, "config": stored}), encoding="utf-8")
    loaded = []
    accelerator = SimpleNamespace(load_state=loaded.append, is_main_process=False)
    return accelerator, loaded


def test_a_checkpoint_from_before_a_setting_resumes_and_a_changed_one_is_refused(tmp_path):
    config = GraceConfig(seed=3)
    accelerator, loaded = _checkpoint(tmp_path, saved_before_probe_c(config))
    assert _resume(accelerator, tmp_path, config) == 4 and len(loaded) == 1
    with pytest.raises(InputError, match="probe_c"):
        _resume(accelerator, tmp_path, GraceConfig(seed=3, probe_c=0.01))


def test_a_finished_run_from_before_a_setting_is_reused(tmp_path):
    config = GraceConfig(seed=3)
    (tmp_path / ARTIFACT_FILE).write_text(json.dumps({"train_config": saved_before_probe_c(config)}),
                                          encoding="utf-8")
    assert _finished_as(tmp_path, config)
    assert not _finished_as(tmp_path, GraceConfig(seed=3, probe_c="cv"))
    assert not _finished_as(tmp_path, GraceConfig(seed=4))
