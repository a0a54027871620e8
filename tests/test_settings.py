"""The one settings vocabulary: config.SETTINGS drives the CLI, the page and the API alike."""

from __future__ import annotations

import dataclasses

import pytest

import main as cli
import pipeline
import ui_handlers
from config import ENGINES, SETTINGS, AppConfig, InferenceConfig, apply_settings, current_value, settings_of
from core.errors import SettingsError


def _options(parser) -> dict[str, object]:
    return {opt: action for action in parser._actions for opt in action.option_strings}  # noqa: SLF001


def _subparser(name: str):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # noqa: SLF001
    return sub.choices[name]


def test_every_run_and_display_setting_is_a_cli_option_with_the_table_default() -> None:
    rec = _options(_subparser("reconstruct"))
    defaults = cli.cli_defaults()
    for s in settings_of("model", "input", "align", "display"):
        assert s.flag in rec, s.flag
        action = rec[s.flag]
        assert s.help.split(" (")[0][:30] in action.help, s.name
        assert (
            f"(default: {current_value(defaults, s.name) if current_value(defaults, s.name) not in ('', None) else 'none'})"
            in action.help
        )
        if s.choices is not None and s.name != "scene_graph":
            assert tuple(action.choices) == s.choices, s.name
    ali = _options(_subparser("align"))
    assert {s.flag for s in settings_of("align", "display")} <= set(ali)
    assert "--engine" not in ali and "--scene-graph" not in ali
    top = _options(cli.build_parser())
    assert {s.flag for s in settings_of("server", "model")} <= set(top)


def test_page_and_api_parameters_are_table_names() -> None:
    assert set(ui_handlers.RUN_KEYS) | set(ui_handlers.DISPLAY_KEYS) <= set(SETTINGS)
    assert set(ui_handlers.DISPLAY_KEYS) == {s.name for s in settings_of("display")}
    widget = ui_handlers.setting_widget(AppConfig(), "niter", "Iterations", maximum=2000)
    assert (widget.minimum, widget.maximum, widget.value, widget.info) == (0, 2000, 300, SETTINGS["niter"].help)
    radio = ui_handlers.setting_widget(AppConfig(), "schedule", "Schedule")
    assert [c[1] for c in radio.choices] == ["linear", "cosine"]


def test_apply_settings_parses_coerces_and_validates_once() -> None:
    cfg = apply_settings(
        AppConfig(),
        {"niter": "40", "lr": "0.02", "shared_focal": "true", "known_focal": "480,500", "scene_graph": "logwin-2"},
    )
    assert cfg.alignment.niter == 40 and cfg.alignment.lr == 0.02 and cfg.alignment.shared_focal is True
    assert cfg.alignment.known_focal == (480.0, 500.0)
    assert cfg.inference.scene_graph == "logwin-2" and cfg.inference.graph == "logwin"
    assert apply_settings(cfg, {"window_size": 4}).inference.scene_graph == "logwin-4"
    assert apply_settings(cfg, {"niter": None}) == cfg  # None = keep
    for bad, needle in [
        ({"nope": 1}, "unknown setting"),
        ({"niter": -1}, "niter must be >= 0"),
        ({"niter": 2.5}, "niter must be int"),
        ({"lr": float("inf")}, "lr must be a finite number"),
        ({"schedule": "step"}, "schedule must be one of"),
        ({"shared_focal": "maybe"}, "shared_focal must be bool"),
        ({"scene_graph": "ring-2"}, "unknown scene graph"),
        ({"engine": "nerf"}, "engine must be one of"),
    ]:
        with pytest.raises(SettingsError, match=needle):
            apply_settings(AppConfig(), bad)


def test_scene_graph_is_structured_fields_with_one_string_form() -> None:
    inf = InferenceConfig.with_graph("swin-3-noncyclic")
    assert (inf.graph, inf.window_size, inf.cyclic) == ("swin", 3, False)
    assert inf.scene_graph == "swin-3-noncyclic"
    assert dataclasses.replace(inf, graph="oneref", ref_image=2).scene_graph == "oneref-2"
    with pytest.raises(SettingsError, match="window_size must be >= 1"):
        InferenceConfig(window_size=0)


def test_engine_registry_lists_the_configured_engines() -> None:
    assert tuple(pipeline.make_engines(AppConfig())) == ENGINES
    assert SETTINGS["engine"].choices == ENGINES
