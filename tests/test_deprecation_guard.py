"""The deprecation guard (tests/deprecation_guard.py): which frame it blames, and the known-uses list."""

from __future__ import annotations

import ast
import traceback
from pathlib import Path

import deprecation_guard as guard

SITE_PACKAGES = "/venv/lib/python3.11/site-packages"


def frame(filename: str, line: int, name: str) -> traceback.FrameSummary:
    return traceback.FrameSummary(filename, line, name, line="")


def certa_frame(relative: str, line: int, name: str) -> traceback.FrameSummary:
    return frame(str(Path(guard.CERTA_DIR) / relative), line, name)


def test_a_deprecated_keyword_passed_through_torch_dispatch_is_blamed_on_certa():
    stack = [frame("/tests/test_x.py", 1, "test"), certa_frame("methods/answer_cache.py", 106, "extend"),
             frame(f"{SITE_PACKAGES}/torch/nn/modules/module.py", 1780, "_call_impl"),
             frame(f"{SITE_PACKAGES}/transformers/utils/deprecation.py", 170, "wrapped_func")]
    assert guard.certa_site(stack, "transformers") == "certa/methods/answer_cache.py:106 (extend)"


def test_another_package_or_a_test_using_the_api_is_not_certa():
    peft_uses_it = [certa_frame("training/trainer.py", 130, "attach_adapter"),
                    frame(f"{SITE_PACKAGES}/peft/peft_model.py", 184, "__init__"),
                    frame(f"{SITE_PACKAGES}/transformers/modeling_utils.py", 3312, "is_gradient_checkpointing")]
    assert guard.certa_site(peft_uses_it, "transformers") is None
    test_uses_it = [frame("/tests/test_x.py", 1, "test"),
                    frame(f"{SITE_PACKAGES}/transformers/utils/generic.py", 600, "past_key_values")]
    assert guard.certa_site(test_uses_it, "transformers") is None


def test_known_uses_are_reported_and_others_fail(monkeypatch):
    monkeypatch.setattr(guard, "_KNOWN", {"certa/generation.py::_decode": "use cache"})
    monkeypatch.setattr(guard, "_pending", [])
    monkeypatch.setattr(guard, "_found", {})
    monkeypatch.setattr(guard, "_known_seen", set())
    for where, name in (("generation.py", "_decode"), ("methods/new.py", "fresh")):
        stack = [certa_frame(where, 10, name), frame(f"{SITE_PACKAGES}/transformers/utils/generic.py", 1, "past_key_values")]
        monkeypatch.setattr(guard.traceback, "extract_stack", lambda stack=stack: stack)
        guard._record("log transformers: deprecated", "transformers")
    assert set(guard._found) == {"certa/generation.py:10 (_decode)", "certa/methods/new.py:10 (fresh)"}
    assert guard._pending == ["certa/methods/new.py:10 (fresh) uses a deprecated API (log transformers: deprecated)"]


def test_every_known_use_names_a_function_that_exists_with_the_change_it_needs():
    known = guard.known_sites()
    for key, change in known.items():
        file, function = key.split("::")
        source = Path(guard.CERTA_DIR).parent / file
        assert source.is_file(), key
        names = {n.name for n in ast.walk(ast.parse(source.read_text(encoding="utf-8")))
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        assert function in names, f"{key}: no such function (moved? update tests/deprecations_known.txt)"
        assert "->" in change, f"{key}: say what the use must change to"
        assert "past_key_values" in source.read_text(encoding="utf-8"), f"{key}: fixed? delete the line"
