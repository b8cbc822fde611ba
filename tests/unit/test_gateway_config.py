"""The HAProxy configuration the gateway generates: order of hosts per model, drain, keys."""

from __future__ import annotations

from pathlib import Path

from tasks.core import haproxy
from tasks.core.haproxy import Engine, Host, Route

ENGINE = Engine("127.0.0.1:8090", "gw-key", Path("/run/gw"), 5, 10, 2, 2**20, 30)
BIG = Host("big", "http://10.0.0.2:8080", "big-key", priority=0, weight=2)
NUC = Host("nuc", "http://10.0.0.3:8080", "nuc-key", priority=1, weight=1)


def _servers(text: str, backend: str) -> list[str]:
    block = text.split(f"backend {backend}\n")[1].split("\n\n")[0]
    return [line.strip() for line in block.splitlines() if line.strip().startswith(("server", "balance"))]


def test_a_host_with_the_model_loaded_comes_before_a_higher_priority_one() -> None:
    text = haproxy.config(
        ENGINE, [BIG, NUC], {"m": [Route(BIG, False, False), Route(NUC, True, False)]}, set()
    )
    balance, first, second = _servers(text, "model_0")
    assert balance == "balance first"  # one best host: a retry takes the next one
    assert first.startswith("server nuc ") and " id 1 " in first
    assert second.startswith("server big ") and "backup" not in second


def test_equal_hosts_share_by_least_connections_and_the_rest_are_backups() -> None:
    third = Host("mini", "http://10.0.0.4:8080", "", priority=0, weight=1)
    routes = {"m": [Route(h, True, False) for h in (NUC, BIG, third)]}
    balance, *servers = _servers(haproxy.config(ENGINE, [BIG, NUC, third], routes, set()), "model_0")
    assert balance == "balance leastconn"
    assert [s.split()[1] for s in servers] == ["big", "mini", "nuc"]
    assert "weight 2" in servers[0] and servers[2].endswith("backup")


def test_a_drained_host_is_disabled_and_not_counted_as_best() -> None:
    routes = {"m": [Route(BIG, True, True), Route(NUC, False, False)]}
    _, nuc, big = _servers(haproxy.config(ENGINE, [BIG, NUC], routes, {"big"}), "model_0")
    assert nuc.startswith("server nuc ") and "backup" not in nuc
    assert big.startswith("server big ") and big.endswith("disabled")


def test_keys_are_redacted_unless_revealed() -> None:
    text = haproxy.config(ENGINE, [BIG, NUC], {}, set())
    assert all(key in text for key in ("gw-key", "big-key", "nuc-key"))
    shown = haproxy.redact(text, ["gw-key", "big-key", "nuc-key"])
    assert not any(key in shown for key in ("gw-key", "big-key", "nuc-key"))


def test_listening_off_loopback_without_a_key_is_refused() -> None:
    import pytest

    from tasks.core import config, gateway
    from tasks.core.errors import HomelabError

    with pytest.raises(HomelabError, match="without a key"):
        gateway.engine(config.load(), host="0.0.0.0")
    assert gateway.engine(config.load(), host="0.0.0.0", key="k").listen.startswith("0.0.0.0:")


def test_drain_touches_the_model_backends_only_never_the_dashboard_or_the_controller() -> None:
    text = haproxy.config(ENGINE, [BIG, NUC], {"m": [Route(BIG, True, False)]}, set())
    assert haproxy.backends(text) == ["model_0", haproxy.ANYWHERE]
