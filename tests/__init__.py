import pytest

# Helpers in tests/support assert too: their failures show the values compared, as a test
# module's do. Registered here, before anything imports them.
pytest.register_assert_rewrite("tests.support")
