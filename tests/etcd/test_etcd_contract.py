"""EtcdRegistry against a real etcd server: the contract MemoryRegistry is held to as well."""

import pytest
from registry_contract import RegistryContract


class TestEtcdRegistryContract(RegistryContract):
    # `registry` (tests/conftest.py) is an EtcdRegistry on a fresh prefix of the shared server.
    @pytest.fixture
    def reg(self, registry):
        return registry

    def compact(self, reg, revision: int) -> None:
        reg.client.compact(revision)
