"""The server reads a model or adapter on a claim only inside that claim (as the trainer does)."""

from __future__ import annotations

import pytest

from kubetune_server.settings import ServerSettings, SettingsError, check_paths


@pytest.fixture
def claims(tmp_path, monkeypatch):
    root = tmp_path / "pvc"
    (root / "models" / "base").mkdir(parents=True)
    (root / "models" / "adapter").mkdir()
    (root / "models" / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "adapter_config.json").write_text("{}")
    monkeypatch.setenv("KUBETUNE_PVC_ROOT", str(root))
    return root


def test_paths_inside_their_claim_pass(claims):
    check_paths(ServerSettings(model=str(claims / "models/base"), adapter=str(claims / "models/adapter")))


@pytest.mark.parametrize("flag", ["model", "adapter"])
def test_a_symlink_or_dotdot_out_of_the_claim_is_refused(claims, tmp_path, flag):
    (claims / "models" / "link").symlink_to(tmp_path / "outside")
    for escape, says in ((claims / "models" / "link", "outside its claim"), (f"{claims}/models/../../outside", "..")):
        paths = {"model": str(claims / "models/base"), "adapter": str(claims / "models/adapter"), flag: str(escape)}
        with pytest.raises(SettingsError, match=f"^--{flag} ") as e:
            check_paths(ServerSettings(**paths))
        assert says in str(e.value)
