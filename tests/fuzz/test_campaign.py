"""CI's short, bounded fuzzing campaign: every target, coverage-guided, no crash allowed."""

from __future__ import annotations

import pytest

from tests.fuzz import campaign

pytestmark = pytest.mark.fuzz


@pytest.mark.parametrize("target", ["image", "description", "plan", "authenticode"])
def test_short_campaign(target, tmp_path):
    result = campaign.run_target(target, 20, tmp_path)
    assert result["inputs"] > 0, result["tail"]
    assert not result["crashes"] and result["exit"] == 0, result["tail"]
