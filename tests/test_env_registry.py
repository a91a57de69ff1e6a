"""The env registry: built-ins, user envs by name and by import path, and its error messages."""

import inspect

import numpy as np
import pytest

from jaxrl_llm.envs import env_registry
from jaxrl_llm.envs.env_registry import env_factory, env_names, env_parameters, make_env, register_env
from jaxrl_llm.envs.text_env import BatchedTextEnv
from jaxrl_llm.envs.text_house import TextHouse
from jaxrl_llm.envs.text_shop import TextShop

# A complete user env in a few lines: guess the hidden digit, one guess per step.
TINY_ENV_SOURCE = '''
class TinyEnv:
    name = "tiny"
    task_types = ("guess",)

    def __init__(self, *, digits=3, max_steps=4):
        if digits < 2:
            raise ValueError(f"digits must be >= 2; got {digits}")
        self.digits, self.max_steps = digits, max_steps

    def describe(self):
        return "Guess the hidden digit with: guess D."

    def reset(self, seed, task_id=0):
        self.secret, self.steps, self.done, self.won, self.invalid = (seed + task_id) % self.digits, 0, False, False, False
        return f"Digits 0..{self.digits - 1}."

    @property
    def info(self):
        return {"task_id": 0, "task_type": "guess", "goal": "find the digit", "step": self.steps,
                "admissible_actions": [f"guess {d}" for d in range(self.digits)], "won": self.won,
                "score": float(self.won), "invalid": self.invalid, "privileged": "",
                "oracle_action": None if self.done else f"guess {self.secret}"}

    def step(self, action_text):
        if self.done:
            return "Done.", 0.0, True, self.info
        self.invalid = action_text not in self.info["admissible_actions"]
        self.steps += 1
        self.won = action_text == f"guess {self.secret}"
        self.done = self.won or self.steps >= self.max_steps
        return ("Right." if self.won else "Wrong."), float(self.won), self.done, self.info
'''


@pytest.fixture
def tiny_module(tmp_path, monkeypatch):
    """`tiny_env_mod.TinyEnv` importable from a temporary folder."""
    (tmp_path / "tiny_env_mod.py").write_text(TINY_ENV_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import tiny_env_mod

    return tiny_env_mod


@pytest.fixture
def clean_registry(monkeypatch):
    """Restores the registry's contents after a test registers envs."""
    env_names()  # built-ins in first, so they are part of what is restored
    monkeypatch.setattr(env_registry, "ENVS", dict(env_registry.ENVS))


def test_builtins_are_listed():
    assert {"textshop", "texthouse"} <= set(env_names())
    assert env_factory("texthouse") is TextHouse and env_factory("textshop") is TextShop
    assert env_parameters("texthouse") == {"num_receptacles": 8, "num_objects": 6,
                                           "closed_prob": 0.5, "max_steps": 15}
    assert env_parameters("textshop") == {"catalog_size": 60, "max_steps": 15}


def test_make_env_builds_a_batched_env_with_kwargs():
    envs = make_env("texthouse", {"max_steps": 12, "num_receptacles": 10})
    assert isinstance(envs, BatchedTextEnv) and envs.name == "texthouse" and envs.max_steps == 12
    obs, infos = envs.reset([0, 1], [3, 3])
    assert obs[0].count(",") == 9  # ten receptacles listed
    assert [i["task_type"] for i in infos] == ["pick", "look"]
    shop = make_env("textshop")
    assert shop.name == "textshop" and shop.max_steps == 15


def test_make_env_errors_name_the_field():
    with pytest.raises(ValueError, match=r"data\.task_kwargs\.env='texthouse': \['bogus'\] are not "
                                         r"arguments of this env; it takes \['closed_prob', 'max_steps', "
                                         r"'num_objects', 'num_receptacles'\]"):
        make_env("texthouse", {"bogus": 1})
    with pytest.raises(ValueError, match=r"data\.task_kwargs\.env='texthouse' with \{'num_receptacles': 3\}: "
                                         r"num_receptacles must be an integer in \[6, 10\]"):
        make_env("texthouse", {"num_receptacles": 3})
    with pytest.raises(ValueError, match=r"data\.task_kwargs\.env: agent env 'nope' is not registered; "
                                         r"registered: \[.*'texthouse'.*\] \(envs\.register_env adds one, "
                                         r"or give 'package\.module:ClassName'\)"):
        make_env("nope")
    with pytest.raises(ValueError, match=r"^agent\.env: agent env 'nope' is not registered"):
        make_env("nope", field="agent.env")


def test_bad_import_paths():
    with pytest.raises(ValueError, match=r"cannot import module 'no_such_module_xyz'"):
        make_env("no_such_module_xyz:Env")
    with pytest.raises(ValueError, match=r"module 'jaxrl_llm\.envs\.text_house' has no attribute 'Nope'"):
        make_env("jaxrl_llm.envs.text_house:Nope")
    with pytest.raises(ValueError, match=r"must look like 'package\.module:ClassName'"):
        make_env("jaxrl_llm.envs.text_house:")
    with pytest.raises(TypeError, match=r"'RECEPTACLES' is a tuple, not a class or callable"):
        make_env("jaxrl_llm.envs.text_house:RECEPTACLES")
    envs = make_env("jaxrl_llm.envs.text_house:TextHouse", {"max_steps": 11})
    assert envs.name == "texthouse" and envs.max_steps == 11


def _play(envs, seeds):
    _, infos = envs.reset([0] * len(seeds), seeds)
    total = np.zeros(len(seeds), np.float32)
    for _ in range(envs.max_steps):
        _, reward, done, infos = envs.step([i["oracle_action"] or "x" for i in infos])
        total += reward
    return total, done


def test_user_env_by_register_env(tiny_module, clean_registry):
    register_env("tiny", tiny_module.TinyEnv)
    assert "tiny" in env_names() and env_parameters("tiny") == {"digits": 3, "max_steps": 4}
    envs = make_env("tiny", {"digits": 5})
    total, done = _play(envs, [0, 1, 2])
    np.testing.assert_array_equal(total, [1, 1, 1])
    assert done.all() and envs.describe().startswith("Guess")
    with pytest.raises(ValueError, match=r"env 'tiny' is already registered; pass overwrite=True"):
        register_env("tiny", TextHouse)
    register_env("tiny", TextHouse, overwrite=True)
    assert make_env("tiny").name == "texthouse"
    register_env("tiny", tiny_module.TinyEnv, overwrite=True)
    with pytest.raises(ValueError, match="'tiny' with {'digits': 1}: digits must be >= 2"):
        make_env("tiny", {"digits": 1})


def test_user_env_by_import_path(tiny_module):
    envs = make_env("tiny_env_mod:TinyEnv", {"max_steps": 2})
    assert envs.name == "tiny" and envs.max_steps == 2
    total, _ = _play(envs, [4])
    assert total.tolist() == [1.0]
    assert "tiny_env_mod:TinyEnv" not in env_names()  # imported, not registered


def test_a_function_factory_with_var_kwargs(clean_registry):
    def house_of(**kwargs):
        return TextHouse(**kwargs)

    register_env("house_fn", house_of)
    assert make_env("house_fn", {"max_steps": 13}).max_steps == 13
    with pytest.raises(ValueError, match=r"'house_fn' with \{'size': 2\}: .*unexpected keyword argument 'size'"):
        make_env("house_fn", {"size": 2})


def test_required_arguments_and_non_envs(clean_registry):
    def needs_level(level):
        return TextHouse()

    register_env("needs_level", needs_level)
    assert env_parameters("needs_level") == {"level": inspect.Parameter.empty}
    with pytest.raises(ValueError, match=r"'needs_level' needs the arguments \['level'\]"):
        make_env("needs_level")

    class NotAnEnv:
        name = "half"

        def reset(self, seed, task_id=0):
            return ""

    register_env("half", NotAnEnv)
    with pytest.raises(TypeError, match=r"built a NotAnEnv, which is not a TextEnv: it lacks "
                                        r"\['step', 'describe', 'task_types', 'max_steps', 'info'\]"):
        make_env("half")


def test_register_env_checks_its_arguments():
    with pytest.raises(ValueError, match="env name must be a non-empty string without ':'"):
        register_env("a:b", TextHouse)
    with pytest.raises(ValueError, match="env name must be a non-empty string"):
        register_env("", TextHouse)
    with pytest.raises(TypeError, match="env factory for 'x' must be callable; got int"):
        register_env("x", 3)
