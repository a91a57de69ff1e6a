"""Multi-host start-up stays off unless the config asks for it, and forwards only set fields."""

import jax

from jaxrl_llm.parallel import distributed


def test_disabled_or_missing_config_does_not_initialise(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    assert distributed.initialize_distributed(None) is False
    assert distributed.initialize_distributed({"enabled": False, "num_processes": 4}) is False
    assert calls == []
    assert distributed.is_primary_process()


def test_enabled_config_forwards_only_the_fields_that_are_set(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(distributed, "_initialized", False)
    cfg = {"enabled": True, "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": -1}
    assert distributed.initialize_distributed(cfg) is True
    assert calls == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 4}]
    # A second call is a no-op: JAX may only be initialised once per process.
    assert distributed.initialize_distributed(cfg) is True
    assert len(calls) == 1
    monkeypatch.setattr(distributed, "_initialized", False)
    assert distributed.initialize_distributed({"enabled": True}) is True
    assert calls[-1] == {}
