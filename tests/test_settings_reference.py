"""One definition of every setting: `vrollout.config.Settings` gives the settings page
(docs/settings.md) and the command's flags, so neither can drift from it."""

from __future__ import annotations

import importlib.util
import json

import pytest
from support import REPO
from vrollout.cli import flags
from vrollout.cli.commands import _settings, build_parser, main
from vrollout.config import Settings

FIELDS = set(Settings.model_fields)
# Flags that existed before the flags were made from Settings: their names are a contract.
SERVE_FLAGS = {
    "--host": "host",
    "--port": "port",
    "--api-token": "api_token",
    "--allowed-host": "allowed_hosts",
}
MODEL_FLAGS = {
    "--student": "student",
    "--teacher": "teacher",
    "--device": "device",
    "--dtype": "dtype",
    "--database": "database",
    "--cache-dir": "cache_dir",
    "--trust-remote-code": "trust_remote_code",
    "--no-noise-floor": "noise_floor",
    "--student-chat-template-kwargs": "student_chat_template_kwargs",
    "--teacher-chat-template-kwargs": "teacher_chat_template_kwargs",
    "--teacher-prompt-format": "teacher_prompt_format",
    "--teacher-device-map": "teacher_device_map",
    "--teacher-max-memory": "teacher_max_memory",
    "--student-device-map": "student_device_map",
    "--student-max-memory": "student_max_memory",
    "--offload-folder": "offload_folder",
    "--backend": "backend",
    "--teacher-url": "teacher_urls",
    "--student-url": "student_urls",
    "--tokenizer": "tokenizer",
    "--vllm-logprobs": "vllm_logprobs",
    "--vllm-concurrency": "vllm_concurrency",
}


def settings_page():
    spec = importlib.util.spec_from_file_location("settings_page", REPO / "docs" / "settings_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def commands():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.choices and "serve" in a.choices]
    return sub.choices


def setting_flags(command) -> dict[str, str]:
    """flag -> field, for the flags the parser added from Settings (its `settings` group)."""
    (group,) = [g for g in command._action_groups if g.title == "settings"]
    return {a.option_strings[0]: a.dest for a in group._group_actions}


def test_the_settings_page_is_generated_from_settings():
    page = settings_page()
    assert (REPO / "docs" / "settings.md").read_text() == page.render(), (
        "docs/settings.md is stale: run python docs/settings_page.py"
    )


def test_every_setting_is_on_the_page_with_its_variable_flag_default_and_description():
    text = (REPO / "docs" / "settings.md").read_text()
    for name, field in Settings.model_fields.items():
        assert field.description, f"Settings.{name} has no description (the page and --help show it)"
        row = next(line for line in text.splitlines() if line.startswith(f"| `VROLLOUT_{name.upper()}` |"))
        assert f"`{flags.flag_name(name)}`" in row
    assert "| `VROLLOUT_MAX_REQUEST_BYTES` | `--max-request-bytes` | int | 8 MiB |" in text
    assert "| `VROLLOUT_CACHE_DIR` | `--cache-dir` | path | `~/.cache/vrollout` |" in text
    assert "| `VROLLOUT_BACKEND` | `--backend` | `local` \\| `vllm` | `local` |" in text


def test_serve_has_exactly_one_flag_per_setting():
    serve = commands()["serve"]
    by_flag = setting_flags(serve)
    assert sorted(by_flag.values()) == sorted(FIELDS)  # every field once, nothing else
    own = {s for a in serve._actions for s in a.option_strings} - set(by_flag) - {"-h", "--help"}
    assert not own, f"serve flags that are not settings: {own}"
    assert {**SERVE_FLAGS, **MODEL_FLAGS}.items() <= by_flag.items()


@pytest.mark.parametrize("name", ["analyze", "localize", "pedagogical"])
def test_the_file_commands_have_one_flag_per_setting_but_the_servers(name):
    command = commands()[name]
    by_flag = setting_flags(command)
    assert len(by_flag) == len(set(by_flag.values()))
    own = {s: a for a in command._actions for s in a.option_strings if s not in by_flag}
    missing = FIELDS - flags.SERVER_ONLY - set(by_flag.values())
    # A setting without a flag here is one whose flag name the command's own option has.
    assert all(flags.flag_name(field) in own for field in missing), missing
    assert not set(by_flag.values()) & flags.SERVER_ONLY
    assert MODEL_FLAGS.items() <= by_flag.items()


def test_a_commands_own_option_keeps_its_meaning():
    parsed = build_parser().parse_args(
        ["pedagogical", "in.jsonl", "--out", "o", "--max-new-tokens", "7", "--teacher-template", "T {prompt}"]
    )
    assert parsed.max_new_tokens == 7 and parsed.teacher_template == "T {prompt}"
    settings = _settings(parsed)  # neither is the setting of the same name
    assert settings.max_new_tokens == Settings().max_new_tokens
    assert settings.teacher_template == Settings().teacher_template


def test_flags_reach_the_settings_over_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VROLLOUT_MAX_TOP_K", "7")
    monkeypatch.setenv("VROLLOUT_CHUNK_SIZE", "64")
    argv = [
        "analyze",
        "in.jsonl",
        "--out",
        "o",
        "--max-top-k",
        "50",
        "--no-noise-floor",
        "--trust-remote-code",
    ]
    argv += ["--teacher-url", "http://a:1", "--teacher-url", "http://b:1", "--offload-folder", str(tmp_path)]
    argv += ["--student-chat-template-kwargs", json.dumps({"enable_thinking": False})]
    s = _settings(build_parser().parse_args(argv))
    assert (s.max_top_k, s.chunk_size) == (50, 64)  # the flag wins; the variable where no flag
    assert (s.noise_floor, s.trust_remote_code) == (False, True)
    assert s.teacher_urls == ["http://a:1", "http://b:1"] and s.backend == "vllm"
    assert s.offload_folder == tmp_path and s.student_chat_template_kwargs == {"enable_thinking": False}
    plain = _settings(build_parser().parse_args(["analyze", "in.jsonl", "--out", "o"]))
    assert (plain.noise_floor, plain.trust_remote_code, plain.backend) == (True, False, "local")


def test_a_refused_flag_value_is_named_by_its_flag(tmp_path, capsys):
    """`--vllm-logprobs 0` was dropped silently (a falsy value read as "not given"); it is refused
    by the setting's bound now, naming the flag, before any model loads."""
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "hi", "response": "hello"}) + "\n")
    argv = ["analyze", str(src), "--out", str(tmp_path / "o.jsonl"), "--database", str(tmp_path / "db")]
    assert main([*argv, "--vllm-logprobs", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --vllm-logprobs: ") and "greater than or equal to 1" in err, err


def test_a_json_flag_that_is_not_json_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["serve", "--teacher-chat-template-kwargs", "{nope"])
    assert exit_.value.code == 2
    assert "--teacher-chat-template-kwargs: not JSON" in capsys.readouterr().err
