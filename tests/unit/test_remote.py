"""Remote command construction: what a Connection-run task sends, checked with fabric's MockRemote."""

from __future__ import annotations

import io
import shlex
import threading
from collections.abc import Iterator
from typing import Any

import fabric
import pytest
from fabric.testing.base import MockRemote, Session
from invoke import Context, task
from invoke.exceptions import Exit

from tasks import _remote, ns
from tasks.core import config, remote
from tasks.core.errors import HomelabError
from tasks.core.fleet import PrefixedLines

HOSTILE = "x'; touch /tmp/pwned; echo ' $(touch /tmp/pwned) `touch /tmp/pwned` \"q\""


@pytest.fixture
def lab_config(project_config: dict[str, Any]) -> dict[str, Any]:
    project_config["hosts"] = {
        "gpu": {"host": "gpu.lan", "user": "me", "port": 2200, "checkout": "/srv/homelab", "tags": ["cuda"]},
        "mac": {"host": "mac.lan", "python": "/opt/py/bin/python", "tags": ["mlx"]},
    }
    return project_config


@pytest.fixture
def mock_remote() -> Iterator[MockRemote]:
    """fabric.testing's stand-in for paramiko: records what would be sent, answers with set exit codes."""
    mock = MockRemote()
    yield mock
    mock.stop()


def sent(channel: Any) -> str:
    (command,), _ = channel.exec_command.call_args
    return str(command)


def connected_to(mock: MockRemote) -> tuple[str, str, int]:
    kwargs = mock.sessions[0].client.connect.call_args.kwargs
    return kwargs["hostname"], kwargs["username"], kwargs["port"]


def fab_config(settings: dict[str, Any]) -> Any:
    """The settings as fab would load them; stdin is not forwarded (pytest's stdin cannot be read)."""
    return fabric.Config(overrides={**settings, "run": {"in_stream": False}})


def connection(host: str, settings: dict[str, Any]) -> Any:
    return fabric.Connection(host, config=fab_config(settings))


def test_inventory_name_resolves_to_its_entry_with_remote_defaults(lab_config: dict[str, Any]) -> None:
    settings = config.validate(lab_config)
    gpu, mac = remote.resolve("gpu", settings), remote.resolve("mac", settings)
    assert (gpu.endpoint.host, gpu.endpoint.user, gpu.endpoint.port) == ("gpu.lan", "me", 2200)
    assert (gpu.checkout, gpu.python) == ("/srv/homelab", settings.remote.python)
    assert (mac.checkout, mac.python) == (settings.remote.checkout, "/opt/py/bin/python")


def test_plain_host_passes_through_for_ssh_config(lab_config: dict[str, Any]) -> None:
    target = remote.resolve("me@box:2222", config.validate(lab_config))
    assert target.endpoint.host == "me@box:2222"
    assert target.checkout == lab_config["remote"]["checkout"]


@pytest.mark.parametrize("name", ["-oProxyCommand=touch /tmp/X", "box -p 1", "box\t"])
def test_plain_host_that_ssh_would_read_as_an_option_is_refused(
    lab_config: dict[str, Any], name: str
) -> None:
    with pytest.raises(HomelabError, match=r"not a host or user name .* — give an inventory name") as refused:
        remote.resolve(name, config.validate(lab_config))
    assert refused.value.exit_code == remote.CONNECTION_FAILED


def test_bootstrap_clone_url_is_never_read_as_a_git_option(
    lab_config: dict[str, Any], mock_remote: MockRemote
) -> None:
    lab_config["remote"]["repo_url"] = "--upload-pack=touch /tmp/pwned"
    (channel,) = mock_remote.expect_sessions(Session(host="gpu.lan", exit=0))
    ns["remote.bootstrap"](Context(config=fab_config(lab_config)), host="gpu", install=False)
    words = shlex.split(sent(channel).split("else ")[1])
    assert words[:5] == ["git", "clone", "--", "--upload-pack=touch /tmp/pwned", "/srv/homelab;"]


def test_select_by_list_tag_or_all(lab_config: dict[str, Any]) -> None:
    settings = config.validate(lab_config)
    assert [t.name for t in remote.select(settings, hosts="mac, other")] == ["mac", "other"]
    assert [t.name for t in remote.select(settings, tag="cuda")] == ["gpu"]
    assert [t.name for t in remote.select(settings, everything=True)] == ["gpu", "mac"]
    with pytest.raises(HomelabError, match="exactly one of"):
        remote.select(settings, hosts="mac", tag="cuda")
    with pytest.raises(HomelabError, match="no hosts tagged 'tpu'"):
        remote.select(settings, tag="tpu")


def test_arguments_rebuild_flags_as_invoke_parses_them() -> None:
    @task(iterable=["tag"], positional=["name"])
    def sample(
        c: Context, name: str, count: int = 1, force: bool = False, cache: bool = True, tag=None, api_key=""
    ):  # type: ignore[no-untyped-def]
        """A task with one argument of each kind."""

    values = {"name": HOSTILE, "count": 3, "force": True, "cache": False, "tag": ["a b", "c"], "api_key": "k"}
    words = remote.task_arguments(sample, values)
    expected = [
        f"--name={HOSTILE}",
        "--count=3",
        "--force",
        "--no-cache",
        "--tag=a b",
        "--tag=c",
        "--api-key=k",
    ]
    assert words == expected
    assert remote.task_arguments(sample, {"name": "n", "count": 1, "force": False, "cache": True}) == [
        "--name=n"
    ]


def test_server_start_on_a_connection_passes_its_shared_flags_by_their_dashed_names(
    lab_config: dict[str, Any], mock_remote: MockRemote
) -> None:
    fab_made = connection("gpu", lab_config)
    (channel,) = mock_remote.expect_sessions(Session(host="gpu.lan", user="me", port=2200, exit=0))
    ns["server.start"](fab_made, api_key_file="~/.key", context_size=512, alias=["a"])
    invoked = sent(channel).split(" && ")[-1]
    assert shlex.split(invoked)[2:] == [
        "invoke",
        "server.start",
        "--api-key-file=~/.key",
        "--context-size=512",
        "--alias=a",
    ]


def test_command_quotes_every_word_and_keeps_tilde_expandable() -> None:
    target = remote.Target("box", remote.Endpoint("box"), "~/my homelab", ".venv/bin/python")
    command = remote.invoke_command(target, "models.info", [f"--name={HOSTILE}"])
    assert command.startswith("cd ~/'my homelab' && .venv/bin/python -m invoke ")
    invoked = command.split(" && ", 1)[1]
    assert shlex.split(invoked) == [".venv/bin/python", "-m", "invoke", "models.info", f"--name={HOSTILE}"]


def test_task_on_a_connection_runs_inv_in_the_hosts_checkout(
    lab_config: dict[str, Any], mock_remote: MockRemote
) -> None:
    fab_made = connection("gpu", lab_config)  # what `fab -H gpu` hands the task; never opened
    (channel,) = mock_remote.expect_sessions(Session(host="gpu.lan", user="me", port=2200, exit=0))
    ns["remote.sync"](fab_made, host=HOSTILE)
    assert connected_to(mock_remote) == ("gpu.lan", "me", 2200)
    environment, checkout, invoked = sent(channel).split(" && ")
    assert environment.startswith("export COLUMNS=")
    assert checkout == "cd /srv/homelab"
    assert shlex.split(invoked)[2:] == ["invoke", "remote.sync", f"--host={HOSTILE}"]


def test_remote_exit_code_becomes_ours(lab_config: dict[str, Any], mock_remote: MockRemote) -> None:
    fab_made = connection("mac", lab_config)
    mock_remote.expect_sessions(Session(host="mac.lan", exit=3))
    with pytest.raises(Exit) as raised:
        ns["models.catalog"](fab_made)
    assert raised.value.code == 3


def test_dotted_name_follows_the_collection() -> None:
    assert _remote.dotted_name(ns, ns["models.catalog"].body) == "models.catalog"
    assert _remote.dotted_name(ns, ns["test.all"].body) == "test.all"


def test_bootstrap_clones_or_updates_then_runs_bootstrap_sh(
    lab_config: dict[str, Any], mock_remote: MockRemote
) -> None:
    lab_config["remote"]["repo_url"] = "https://git.lan/me/llm-homelab.git"
    (channel,) = mock_remote.expect_sessions(Session(host="gpu.lan", exit=0))
    ns["remote.bootstrap"](Context(config=fab_config(lab_config)), host="gpu")
    assert sent(channel) == (
        "if [ -d /srv/homelab/.git ]; then git -C /srv/homelab pull --ff-only; "
        "else git clone -- https://git.lan/me/llm-homelab.git /srv/homelab; fi "
        "&& cd /srv/homelab && bash bootstrap.sh"
    )


def test_unbalanced_quotes_in_fleet_args_are_one_line() -> None:
    assert remote.split_words("'tiny llama' --force") == ["tiny llama", "--force"]
    with pytest.raises(HomelabError, match="balance the quotes"):
        remote.split_words("'tiny")


def test_prefixed_lines_waits_for_whole_lines() -> None:
    sink = io.StringIO()
    stream = PrefixedLines("gpu", sink, threading.Lock())
    stream.write("downloading 1")
    stream.write("0%\ndone\npart")
    assert sink.getvalue() == "gpu | downloading 10%\ngpu | done\n"
    stream.close()
    assert sink.getvalue().endswith("gpu | part\n")


def test_sub_second_connect_timeout_still_times_out(
    lab_config: dict[str, Any], mock_remote: MockRemote
) -> None:
    """fabric truncates connect_timeout to whole seconds, and 0 there means wait forever."""
    lab_config["remote"]["connect_timeout_s"] = 0.5
    fab_made = connection("mac", lab_config)
    mock_remote.expect_sessions(Session(host="mac.lan", exit=0))
    ns["models.catalog"](fab_made)
    assert mock_remote.sessions[0].client.connect.call_args.kwargs["timeout"] == 1
