from __future__ import annotations

from pathlib import Path

import pytest

from mailmerge.campaign import load_campaign
from mailmerge.errors import ConfigError, ExitCode


def test_loads_sample_campaign_with_defaults() -> None:
    campaign = load_campaign(Path(__file__).parent.parent / "campaigns" / "welcome.toml")
    assert campaign.name == "welcome"
    assert campaign.mailboxes == ["news@contoso.example"]
    assert campaign.settings.graph.base_url == "https://graph.microsoft.com/v1.0"
    assert campaign.settings.limits.batch_size == 20
    assert campaign.database_url.endswith("campaigns/welcome.db")
    assert campaign.resolve(campaign.settings.recipients.source).is_file()


def test_every_problem_is_named_by_key(make_campaign, tmp_path: Path) -> None:
    path = make_campaign(limits="batch_size = 50\nconcurency = 2")
    with pytest.raises(ConfigError) as caught:
        load_campaign(path)
    text = str(caught.value)
    assert str(path) in text
    assert "[limits] batch_size" in text and "20" in text
    assert "[limits] concurency: unknown key" in text
    assert caught.value.exit_code is ExitCode.CONFIG


def test_missing_section_and_bad_toml(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text('[campaign]\nname = "x"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[sender\]: required key is missing"):
        load_campaign(path)
    path.write_text("[campaign\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_campaign(path)


def test_http_endpoints_are_refused(make_campaign) -> None:
    path = make_campaign()
    path.write_text(path.read_text() + '\n[graph]\nbase_url = "http://graph.example/v1.0"\n')
    with pytest.raises(ConfigError, match="https"):
        load_campaign(path)


def test_database_url_and_relative_paths(make_campaign, tmp_path: Path) -> None:
    path = make_campaign()
    text = path.read_text().replace('name = "test"', 'name = "test"\ndatabase = "postgresql://u:pw@db/mm"')
    path.write_text(text)
    assert load_campaign(path).database_url == "postgresql://u:pw@db/mm"
