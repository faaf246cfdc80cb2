"""The diagnostic tools refuse bad input in one line, naming it."""

import pytest

from tools.average_controllers import average
from worldmodels.errors import InputError


def test_average_controllers_names_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "not_a_run").mkdir()
    with pytest.raises(InputError, match="not_a_run.*no trained M"):
        average(tmp_path / "out", [tmp_path / "not_a_run"])
    assert not (tmp_path / "out").exists()
