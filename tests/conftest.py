from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from gateway import testing as support

# Gateways started by the tests log an accept line too (they wait on it); a test of the
# default, one line per session, says log_connect = false itself.
os.environ.setdefault("MQTTGW_TEST_LOG_CONNECT", "1")


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> support.Pki:
    directory = str(tmp_path_factory.mktemp("pki"))
    return support.make_pki(directory)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    directory = str(tmp_path_factory.mktemp("broker"))
    process, port = support.start_mosquitto(directory)
    yield port
    process.stop()


@pytest.fixture
def workdir(tmp_path: os.PathLike[str]) -> str:
    return str(tmp_path)
