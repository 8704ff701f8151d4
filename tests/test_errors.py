"""custom.errors: user errors found anywhere in an exception chain."""

from custom.data import DatasetError
from custom.errors import user_error


def test_user_error_walks_the_chain():
    try:
        try:
            raise DatasetError("labels/c0.nii.gz: label values 3 outside {0, 1}")
        except DatasetError as inner:
            raise RuntimeError("Failed to evaluate ConfigExpression") from inner
    except RuntimeError as outer:
        found = user_error(outer)
    assert isinstance(found, DatasetError) and "label values 3" in str(found)
    assert user_error(RuntimeError("a bug")) is None
    assert isinstance(user_error(FileNotFoundError("x")), FileNotFoundError)
