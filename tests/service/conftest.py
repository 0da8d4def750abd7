import pytest

from tests.service.daemon import Daemon, write_config


@pytest.fixture
def daemon(bed, tmp_path):
    d = Daemon(write_config(bed, tmp_path)).start()
    try:
        yield d
    finally:
        d.stop()
