"""local.quota: control/quotas parsing and limits."""

from __future__ import annotations

import pytest

from pyqmail.formats.control import ControlError
from pyqmail.local.quota import limit_for, parse_quotas


def test_user_lines_and_default() -> None:
    q = parse_quotas("# limits\nJoe:1000\n:50\nfree:0\n", path="control/quotas")
    assert limit_for(q, "joe") == 1000
    assert limit_for(q, "other") == 50
    assert limit_for(q, "free") == 0
    assert limit_for(parse_quotas(None, path="q"), "joe") == 0


def test_bad_value_names_file_and_line() -> None:
    with pytest.raises(ControlError, match="control/quotas:2"):
        parse_quotas("a:1\nb:lots\n", path="control/quotas")
