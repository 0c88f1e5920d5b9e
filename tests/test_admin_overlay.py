"""The runtime overlay on its own: changes, replay on a file, conflicts, the state file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maitred.config import Config, parse_config_text
from maitred.control.overlay import (
    Overlay,
    OverlayError,
    check_overlay,
    load_overlay,
    resolve_state_file,
    save_overlay,
)
from maitred.control.validation import ChangeRejected, validate_config_data

FILE = """
listeners: [{name: public, bind: 127.0.0.1:0, pool: web}]
pools:
  web:
    servers:
      - {address: 127.0.0.1:9001}
      - {address: 127.0.0.1:9002, weight: 2}
  spare:
    servers: [{address: 127.0.0.1:9101}]
"""


@pytest.fixture
def file_config() -> Config:
    return parse_config_text(FILE)


def effective(file_config: Config, overlay: Overlay) -> tuple[Config, list[str]]:
    data, conflicts = overlay.replay(file_config.to_dict())
    return validate_config_data(data), conflicts


def addresses(config: Config, pool: str) -> dict[str, int]:
    return {str(s.address): s.weight for s in config.pools[pool].servers}


def test_server_changes_replay_on_the_file(file_config: Config) -> None:
    overlay = Overlay()
    overlay.add_server("web", {"address": "127.0.0.1:9003", "weight": 5}, file_config)
    overlay.set_weight("web", "127.0.0.1:9001", 7)
    overlay.remove_server("web", "127.0.0.1:9002", file_config)
    config, conflicts = effective(file_config, overlay)
    assert conflicts == []
    assert addresses(config, "web") == {"127.0.0.1:9001": 7, "127.0.0.1:9003": 5}


def test_removing_an_added_server_leaves_no_trace(file_config: Config) -> None:
    overlay = Overlay()
    overlay.add_server("web", {"address": "127.0.0.1:9003"}, file_config)
    overlay.set_state("web", "127.0.0.1:9003", "maint")
    overlay.remove_server("web", "127.0.0.1:9003", file_config)
    assert overlay.is_empty()


def test_a_deleted_file_server_added_again_takes_the_new_settings(file_config: Config) -> None:
    overlay = Overlay()
    overlay.remove_server("web", "127.0.0.1:9002", file_config)
    overlay.add_server("web", {"address": "127.0.0.1:9002", "weight": 9}, file_config)
    config, conflicts = effective(file_config, overlay)
    assert conflicts == []
    assert addresses(config, "web") == {"127.0.0.1:9001": 1, "127.0.0.1:9002": 9}


def test_pools_added_replaced_and_removed(file_config: Config) -> None:
    overlay = Overlay()
    overlay.add_pool(
        "api", {"algorithm": "random", "servers": [{"address": "127.0.0.1:9201"}]}, file_config
    )
    overlay.add_server("api", {"address": "127.0.0.1:9202"}, file_config)
    overlay.set_weight("api", "127.0.0.1:9201", 3)
    overlay.remove_pool("spare", file_config)
    config, conflicts = effective(file_config, overlay)
    assert conflicts == []
    assert set(config.pools) == {"web", "api"}
    assert config.pools["api"].algorithm == "random"
    assert addresses(config, "api") == {"127.0.0.1:9201": 3, "127.0.0.1:9202": 1}

    overlay.remove_pool("api", file_config)
    config, _ = effective(file_config, overlay)
    assert set(config.pools) == {"web"}
    assert overlay.added_servers == {} and overlay.added_pools == {}


def test_conflicts_with_a_changed_file_are_skipped_and_reported(file_config: Config) -> None:
    overlay = Overlay()
    overlay.remove_server("web", "127.0.0.1:9001", file_config)
    overlay.add_server("web", {"address": "127.0.0.1:9003", "weight": 4}, file_config)
    overlay.set_weight("web", "127.0.0.1:9002", 6)
    overlay.set_state("web", "127.0.0.1:9002", "drain")
    overlay.remove_pool("spare", file_config)
    overlay.add_pool("api", {"servers": []}, file_config)
    # The new file: 9001 and 9002 gone, 9003 in it, spare gone, an api pool of its own.
    changed = parse_config_text(
        """
listeners: [{name: public, bind: 127.0.0.1:0, pool: web}]
pools:
  web: {servers: [{address: 127.0.0.1:9003}]}
  api: {algorithm: random}
"""
    )
    config, conflicts = effective(changed, overlay)
    assert addresses(config, "web") == {"127.0.0.1:9003": 1}  # the file's settings win
    assert config.pools["api"].algorithm == "random"
    assert conflicts == [
        "pools.spare: deleted at runtime, but the file no longer has this pool",
        "pools.api: added at runtime, but the file now has a pool of that name too "
        "(the file's is used)",
        "pools.web: server 127.0.0.1:9001 was deleted at runtime, but the file no longer has it",
        "pools.web: the weight of server 127.0.0.1:9002 was changed at runtime, but the file "
        "no longer has that server",
        "pools.web: server 127.0.0.1:9003 was added at runtime, but the file now has it too "
        "(the file's settings are used)",
    ]
    states, state_conflicts = overlay.states_for(config)
    assert states == {}
    assert state_conflicts == [
        "pools.web: server 127.0.0.1:9002 was set to 'drain' at runtime, but the "
        "configuration no longer has it"
    ]


def test_states_map_to_server_ids(file_config: Config) -> None:
    overlay = Overlay()
    overlay.set_state("web", "127.0.0.1:9001", "maint")
    overlay.set_state("web", "127.0.0.1:9002", "drain")
    overlay.set_state("web", "127.0.0.1:9002", "ready")
    states, conflicts = overlay.states_for(file_config)
    assert states == {"web-127.0.0.1-9001": "maint"} and conflicts == []


def test_invalid_results_name_the_field(file_config: Config) -> None:
    data = file_config.to_dict()
    data["pools"]["web"]["servers"].append({"address": "127.0.0.1:9003", "weight": 0})
    with pytest.raises(ChangeRejected) as refused:
        validate_config_data(data, blame=("pools", "web", "servers", 2))
    assert (refused.value.field, refused.value.message) == ("weight", "must be >= 1")
    assert refused.value.problems == ["pools.web.servers[2].weight: must be >= 1"]


def test_state_file_round_trip_and_errors(tmp_path: Path, file_config: Config) -> None:
    path = tmp_path / "deep" / "runtime.json"
    assert load_overlay(path).is_empty()
    overlay = Overlay()
    overlay.add_server("web", {"address": "127.0.0.1:9003"}, file_config)
    overlay.remove_server("web", "127.0.0.1:9001", file_config)
    overlay.set_state("web", "127.0.0.1:9002", "maint")
    save_overlay(path, overlay)
    assert load_overlay(path) == overlay
    assert json.loads(path.read_text())["format"] == 1

    path.write_text('{"format": 99}')
    with pytest.raises(OverlayError):
        load_overlay(path)
    path.write_text("[")
    with pytest.raises(OverlayError):
        load_overlay(path)


def test_check_overlay_lists_conflicts_and_refusals(tmp_path: Path, file_config: Config) -> None:
    path = tmp_path / "runtime.json"
    assert check_overlay(file_config, path) == []
    overlay = Overlay()
    overlay.remove_server("web", "127.0.0.1:9001", file_config)
    overlay.remove_pool("web", file_config)  # the listener still needs it
    save_overlay(path, overlay)
    problems = check_overlay(file_config, path)
    assert len(problems) == 1
    assert problems[0].startswith(
        f"{path}: with the runtime changes, listeners[0].pool: unknown pool 'web'"
    )


def test_state_file_location(tmp_path: Path, file_config: Config) -> None:
    explicit = file_config.model_copy(update={"state_dir": str(tmp_path / "s")})
    assert resolve_state_file(explicit, None) == tmp_path / "s" / "runtime.json"
    by_file = resolve_state_file(file_config, tmp_path / "lb.yaml")
    assert by_file.parent.name == "runtime"
    assert by_file.name.endswith("lb.yaml.json") and "/" not in by_file.name
    by_flags = resolve_state_file(file_config, None)
    assert by_flags.name == "listen-127.0.0.1_0.json"
